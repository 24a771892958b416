"""`codellama-hf generate`: ordered records with line numbers, error records, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from codellama_hf.serving import load_service, run_batch

from .conftest import KV_CACHE_TOKENS, reference_greedy

LINES = [
    {"input_data": {"input_string": ["def fibonacci("], "parameters": {"max_new_tokens": 6}}},  # a /score body
    {"input_string": ["def a(", "class B:"], "parameters": {"max_new_tokens": 5}},  # the model card's input_data
    {"prefix": "def add(a, b):\n    ", "suffix": "\n    return total\n"},
    {"prompt": "import os\n", "parameters": {"max_new_tokens": 4, "return_full_text": False}},
    "this is not json",
    {"prefix": 3, "suffix": "x"},
    {"something": "else"},
    {"prompt": "x", "parameters": {"temperature": -1, "do_sample": True}},
    [1, 2],
]


def write_input(path, lines) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def service(instruct_folder):
    s = load_service(instruct_folder, engine="continuous", kv_cache_tokens=KV_CACHE_TOKENS)
    yield s
    s.engine.stop()


def test_every_line_gets_a_record_in_order_and_bad_lines_get_errors(service, tmp_path, meta):
    write_input(tmp_path / "in.jsonl", LINES)
    summary = run_batch(service, tmp_path / "in.jsonl", tmp_path / "out.jsonl", default_max_new_tokens=8,
                        quiet=True)
    records = read(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == list(range(1, len(LINES) + 1))
    assert (summary.written, summary.errors, summary.skipped) == (len(LINES), 5, 0)
    assert list(records[0]["output"][0]) == ["0"] and records[0]["output"][0]["0"].startswith("def fibonacci(")
    assert [list(o) for o in records[1]["output"]] == [["0"], ["1"]]
    prefix, suffix = LINES[2]["prefix"], LINES[2]["suffix"]
    middle = meta.decode_infilling(reference_greedy(service, meta.infilling_prompt(prefix, suffix), 8))
    assert records[2]["output"] == {"infill": middle, "generated_text": prefix + middle + suffix}
    assert not records[3]["output"]["generated_text"].startswith("import os")
    assert "not JSON" in records[4]["error"] and "string \"prefix\" and \"suffix\"" in records[5]["error"]
    assert "needs \"input_string\"" in records[6]["error"] and "parameters.temperature" in records[7]["error"]
    assert "must be a JSON object" in records[8]["error"]


def test_a_line_that_cannot_fit_or_has_a_bad_field_is_an_error_record_and_the_job_goes_on(service, tmp_path):
    # More inputs on one line than may run at once would wait forever; a wrong type must not end the job.
    lines = [{"input_string": ["x"] * (service.engine.max_queue + 1), "parameters": {"max_new_tokens": 1}},
             {"prefix": "a", "suffix": "b", "max_prompt_tokens": "64"},
             {"prompt": "x", "parameters": {"max_new_tokens": 2}}]
    write_input(tmp_path / "in.jsonl", lines)
    summary = run_batch(service, tmp_path / "in.jsonl", tmp_path / "out.jsonl", default_max_new_tokens=2,
                        quiet=True)
    records = read(tmp_path / "out.jsonl")
    assert (summary.written, summary.errors) == (3, 2) and [r["line"] for r in records] == [1, 2, 3]
    assert "at most" in records[0]["error"] and "raise --concurrency" in records[0]["error"]
    assert "\"max_prompt_tokens\" must be an integer, got '64'" in records[1]["error"]
    assert "output" in records[2] and service.engine.in_flight == 0


def test_a_rerun_skips_complete_lines_and_rewrites_a_torn_one(service, tmp_path):
    write_input(tmp_path / "in.jsonl", LINES[:4])
    run_batch(service, tmp_path / "in.jsonl", tmp_path / "full.jsonl", default_max_new_tokens=8, quiet=True)
    full = (tmp_path / "full.jsonl").read_text()
    torn = "".join(full.splitlines(keepends=True)[:2]) + full.splitlines(keepends=True)[2][:15]
    (tmp_path / "out.jsonl").write_text(torn)  # killed mid-write of line 3
    summary = run_batch(service, tmp_path / "in.jsonl", tmp_path / "out.jsonl", default_max_new_tokens=8,
                        quiet=True)
    assert (summary.skipped, summary.written) == (2, 2)
    assert (tmp_path / "out.jsonl").read_text() == full


def test_an_output_of_another_input_is_refused(service, tmp_path):
    from codellama_hf.errors import UserInputError

    write_input(tmp_path / "in.jsonl", LINES[:1])
    (tmp_path / "out.jsonl").write_text('{"line": 1}\n{"line": 2}\n')
    with pytest.raises(UserInputError, match="already holds 2 lines but the input has 1"):
        run_batch(service, tmp_path / "in.jsonl", tmp_path / "out.jsonl", quiet=True)


def cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return [sys.executable, "-m", "codellama_hf_cli", *args], env


def test_generate_resumes_after_a_kill(instruct_folder, service, tmp_path):
    lines = [{"prompt": f"def f{i}(x):", "parameters": {"max_new_tokens": 16}} for i in range(30)]
    write_input(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    args = ["generate", "--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--concurrency", "1",
            "--engine", "continuous", "--kv-cache-tokens", str(KV_CACHE_TOKENS), str(instruct_folder)]
    command, env = cli(*args)
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_text().count("\n") >= 3):
            assert job.poll() is None, job.stderr.read().decode()
            assert time.monotonic() < deadline, "no output from the job"
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(timeout=30)
    written = out.read_text().count("\n")
    assert 3 <= written < len(lines), "the job was not killed mid-run"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{written} lines were already there" in done.stderr and "tokens/s" in done.stderr
    records = read(out)
    assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
    write_input(tmp_path / "in.jsonl", lines)  # the same job in one go, in-process: the same records
    run_batch(service, tmp_path / "in.jsonl", tmp_path / "once.jsonl", quiet=True)
    assert read(tmp_path / "once.jsonl") == records


def test_serve_starts_from_the_command_line_with_its_options(instruct_folder, tmp_path):
    import httpx

    from .conftest import free_port

    port = free_port()
    (tmp_path / "keys").write_text("# one key a line\nfile-key\n")
    command, env = cli("serve", str(instruct_folder), "--port", str(port), "--api-key-file", str(tmp_path / "keys"),
                       "--kv-cache-tokens", "4096", "--model-name", "my-codellama", "--log-level", "warning")
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"X-Api-Key": "file-key"}).json()["data"][0]["id"] == "my-codellama"
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 130  # interrupted: uvicorn shut down cleanly, then the CLI said so
    assert "Traceback" not in server.stderr.read().decode()


def test_serve_without_a_folder_says_so_in_one_line(tmp_path, capsys):
    import codellama_hf_cli

    assert codellama_hf_cli.main(["serve", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a converted model folder (no config.json); pass the output folder "
                                        "of `codellama-hf convert`")


def test_generate_without_ray_imports_no_ray(instruct_folder, tmp_path):
    write_input(tmp_path / "in.jsonl", [{"prompt": "x", "parameters": {"max_new_tokens": 1}}])
    code = ("import sys, codellama_hf_cli as cli; rc = cli.main(sys.argv[1:]); "
            "print([m for m in sys.modules if m.split('.')[0] == 'ray']); sys.exit(rc)")
    command, env = cli("generate", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                       "--quiet", "--kv-cache-tokens", str(KV_CACHE_TOKENS), str(instruct_folder))
    done = subprocess.run([sys.executable, "-c", code, *command[3:]], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]" and read(tmp_path / "out.jsonl")[0]["line"] == 1


def test_generate_ray_without_the_extra_is_a_one_line_error(instruct_folder, tmp_path, monkeypatch, capsys):
    import codellama_hf_cli

    write_input(tmp_path / "in.jsonl", LINES[:1])
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    rc = codellama_hf_cli.main(["generate", "--ray", "--input", str(tmp_path / "in.jsonl"), "--output",
                                str(tmp_path / "out.jsonl"), str(instruct_folder)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "pip install 'codellama-hf[ray]'" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_ray_replicas_default_to_what_the_cluster_holds_and_more_are_refused():
    from codellama_hf.errors import UserInputError
    from codellama_hf.serving.batch_ray import _replicas

    class Cluster:  # ray.cluster_resources() of a 2-node cluster: 16 CPUs, 4 GPUs
        cluster_resources = staticmethod(lambda: {"CPU": 16.0, "GPU": 4.0})

    assert _replicas(Cluster, None, 1.0, 0.0) == 16 and _replicas(Cluster, None, 0.5, 0.0) == 32
    assert _replicas(Cluster, None, 1.0, 1.0) == 4 and _replicas(Cluster, None, 2.0, 0.5) == 8
    assert _replicas(Cluster, 3, 1.0, 1.0) == 3
    with pytest.raises(UserInputError, match=r"--ray-replicas 5 with 1 CPUs and 1 GPUs each: .* room for 4"):
        _replicas(Cluster, 5, 1.0, 1.0)


def test_generate_needs_no_http_module(monkeypatch):
    """The batch job imports no HTTP module, so `codellama-hf generate` runs where uvicorn and fastapi are not
    installed (an import of either then fails, as a missing package does)."""
    import codellama_hf_cli
    from codellama_hf.errors import UserInputError

    for name in ("uvicorn", "fastapi"):
        monkeypatch.setitem(sys.modules, name, None)
    assert codellama_hf_cli._serving(http=False).run_batch
    with pytest.raises(UserInputError, match="serve extra"):
        codellama_hf_cli._serving(http=True)
