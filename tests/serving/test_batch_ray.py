"""`codellama-hf generate --ray`: the JSONL job as Ray Data map_batches over engine replicas, on a local Ray instance
and on a 2-raylet local cluster. Ray's traps (issue 23): usage stats off, an explicit loopback node address (Ray
rewrites 127.0.0.1 to the network address, where a cluster hangs; 127.0.0.2 runs), logs in a short tmp dir (Ray's
socket paths must fit 107 bytes). Every job runs in a subprocess with a timeout; the cluster stops in a finally."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from .conftest import KV_CACHE_TOKENS

pytestmark = pytest.mark.ray
pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install -e '.[ray]')")

NODE_IP = "127.0.0.2"
JOB_TIMEOUT_S = 240  # a guard against a hang; a job takes 30-90 s on 2 busy cores

PROMPTS = [{"prompt": f"def f{i}(x):", "parameters": {"max_new_tokens": 4}} for i in range(8)]
BAD = {3: "this is not json", 6: json.dumps({"something": "else"})}


def write_input(path) -> list[str]:
    lines = [BAD.get(i, json.dumps(p)) for i, p in enumerate(PROMPTS)]
    path.write_text("".join(line + "\n" for line in lines))
    return lines


def seed_output(path) -> str:
    """Two complete records no model wrote (a resumed job must keep them as they are) and a torn third line."""
    kept = "".join(json.dumps({"line": n, "output": {"generated_text": f"kept {n}"}}) + "\n" for n in (1, 2))
    path.write_text(kept + '{"line": 3, "outp')
    return kept


def processes_of(temp: str) -> list[int]:
    """The live processes this test's Ray started: those with its RAY_TMPDIR in their environment."""
    mark, pids = f"RAY_TMPDIR={temp}".encode(), []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if mark in environ and state != b"Z" and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


def assert_nothing_left(temp: str) -> None:
    """Every replica's process ends with the job (a non-daemon engine thread once kept them alive, holding the
    model, after Ray had gone)."""
    deadline = time.monotonic() + 30
    while processes_of(temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_of(temp), "Ray processes outlived the job"


@pytest.fixture
def ray_env(monkeypatch):
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_TMPDIR", temp)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))  # the driver and every Ray worker import this tree
    yield temp
    for pid in processes_of(temp):  # whatever a failed test left, by its own id
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def generate(folder, tmp_path, *ray_args) -> tuple[subprocess.CompletedProcess, list[dict], str]:
    write_input(tmp_path / "in.jsonl")
    kept = seed_output(tmp_path / "out.jsonl")
    command = [sys.executable, "-m", "codellama_hf_cli", "generate", *ray_args, "--input", str(tmp_path / "in.jsonl"),
               "--output", str(tmp_path / "out.jsonl"), "--kv-cache-tokens", str(KV_CACHE_TOKENS), str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    text = (tmp_path / "out.jsonl").read_text()
    return done, [json.loads(line) for line in text.splitlines()], kept if text.startswith(kept) else ""


def check_records(records: list[dict], kept: str) -> None:
    assert kept, "the resumed job rewrote the complete lines already there"
    assert [r["line"] for r in records] == list(range(1, len(PROMPTS) + 1))
    assert [n for n, r in enumerate(records) if "error" in r] == sorted(BAD)
    assert "not JSON" in records[3]["error"] and "needs \"input_string\"" in records[6]["error"]
    for n in (2, 4, 5, 7):  # answered by a replica: the prompt and what the model wrote after it
        prompt = PROMPTS[n]["prompt"]
        assert records[n]["output"]["generated_text"].startswith(prompt), records[n]
        assert len(records[n]["output"]["generated_text"]) > len(prompt)


def test_generate_on_a_local_ray_instance(instruct_folder, tmp_path, ray_env):
    done, records, kept = generate(instruct_folder, tmp_path, "--ray", "--ray-node-ip", NODE_IP, "--ray-replicas", "1",
                                   "--ray-cpus-per-replica", "0.5")
    check_records(records, kept)
    assert "2 lines were already there" in done.stderr and "1 Ray nodes answered" in done.stderr
    assert re.search(r"\(2 errors\), [1-9]\d* tokens", done.stderr)
    assert_nothing_left(ray_env)


def test_generate_on_a_two_node_cluster_spreads_the_replicas(instruct_folder, tmp_path, ray_env):
    from ray.cluster_utils import Cluster

    # Two raylets of 2 logical CPUs each; a replica takes 1.5, so each node holds exactly one and the rest of its
    # CPUs stays free for Ray Data's own tasks.
    node = {"num_cpus": 2, "node_ip_address": NODE_IP, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False}, connect=False)
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes(timeout=60)
        node_ids = {n.node_id for n in cluster.list_all_nodes()}
        assert len(node_ids) == 2
        done, records, kept = generate(instruct_folder, tmp_path, f"--ray={cluster.address}", "--ray-node-ip", NODE_IP,
                                       "--ray-replicas", "2", "--ray-cpus-per-replica", "1.5")
    finally:
        cluster.shutdown()
    assert_nothing_left(ray_env)
    check_records(records, kept)
    answered = dict(re.findall(r"node ([0-9a-f]+): (\d+) lines", done.stderr))
    assert {full for full in node_ids for short in answered if full.startswith(short)} == node_ids, done.stderr
    assert sum(map(int, answered.values())) == len(PROMPTS) - 2
