"""`codellama-hf demo` end to end, as a user runs it (subprocesses, offline), and the pieces it stands on: the
checkpoint it writes, its tiny tokenizer against SentencePiece, its fallbacks and its clean-up."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import codellama_hf_cli
from codellama_hf import demo
from codellama_hf.demo import runner
from codellama_hf.errors import UserInputError
from tests.fixtures_convert import META_SPLIT
from tests.fixtures_tokenizer import TINY_SPM_VOCAB, MetaReference, stdlib_snippets

CLI = Path(sys.executable).with_name("codellama-hf")
TEMP_PREFIX = "codellama-hf-demo-"


def start(args: list[str], tmp: Path) -> subprocess.Popen:
    """The real command, offline, with its own TMPDIR so what it leaves behind can be seen."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # Ctrl-C must reach Python even where the test runner was started with SIGINT ignored (a background job)
    return subprocess.Popen([str(CLI), "demo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def leftovers(tmp: Path) -> list[str]:
    return [p.name for p in tmp.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture(scope="module")
def runs(make_meta_checkpoint, tiny_vocabs, tmp_path_factory):
    """The runs of the real command, started together (each mostly waits on imports), with their wall times."""
    root = tmp_path_factory.mktemp("demo")
    meta = make_meta_checkpoint("CodeLlama-34b-Instruct", vocab=TINY_SPM_VOCAB,
                                tokenizer_model=tiny_vocabs["plain"] / "tokenizer.model")
    plans = {"default": ["--max-new-tokens", "8"], "keep": ["--keep", str(root / "kept" / "files")],
             "meta-dir": ["--meta-dir", str(meta), "--max-new-tokens", "8"],
             "bad": ["--keep", str(_non_empty(root))]}
    procs = {name: (start(args, root / name / "tmp"), time.monotonic()) for name, args in plans.items()}
    done = {}
    for name, (proc, began) in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        done[name] = {"code": proc.returncode, "stdout": stdout, "stderr": stderr, "tmp": root / name / "tmp",
                      "seconds": time.monotonic() - began}
    done["keep"]["dir"] = root / "kept" / "files"
    done["bad"]["dir"] = root / "full"
    return done


def test_the_demo_runs_every_step_offline_and_says_the_weights_are_random(runs):
    run = runs["default"]
    out = run["stdout"]
    assert run["code"] == 0, run["stderr"]
    assert "Traceback" not in run["stderr"]
    assert "RANDOM weights" in out.splitlines()[0] and "gibberish by design" in out.splitlines()[0]
    titles = re.findall(r"^\[(\d)/5\] (.+)$", out, flags=re.M)
    assert [n for n, _ in titles] == ["1", "2", "3", "4", "5"], out
    assert 'pipeline("code-infilling")' in titles[3][1] and 'pipeline("text-generation")' in titles[4][1]
    assert len(re.findall(r"^      done in \d+\.\d s$", out, flags=re.M)) == 5
    assert re.search(r"^      loaded as (4-bit nf4 \(bitsandbytes\)|bfloat16 \()", out, flags=re.M), out
    assert re.search(r"^      middle generated: '.*'$", out, flags=re.M)
    assert re.search(r"^      assistant: '.*'$", out, flags=re.M)
    summary = out[out.index("\nsummary\n"):]
    assert "ran       infilling and chat, at most 8 new tokens each" in summary
    assert "files     removed" in summary


def test_bitsandbytes_optional_kernel_line_is_explained_not_shown(runs):
    """The real demo, offline: our line matches what bitsandbytes did on this machine; its own lines stay back."""
    run = runs["default"]
    assert "kernels-community" not in run["stdout"] + run["stderr"]  # the hub repo's id, in any line of theirs
    bnb = pytest.importorskip("bitsandbytes.functional")
    ours = [line for line in run["stdout"].splitlines() if "optional faster" in line]
    if not bnb.has_avx512bf16():  # bitsandbytes never asks for the kernel on this CPU: nothing to explain
        assert ours == []
        return
    installed = runner._importable("kernels")
    possible = {runner.optional_kernel_line(state, kernels_installed=installed) for state in ("loaded", "missing")}
    assert len(ours) == 1 and ours[0] in possible


# bitsandbytes as it looks for its optional kernel on an AVX512-BF16 CPU: its CPU backend is imported again with
# `has_avx512bf16` answering True, inside the demo's notice, in a subprocess (the re-import re-registers bitsandbytes'
# CPU ops, which this test process must not see). `kernels` is blocked (not installed) or a stand-in whose
# `get_kernel` fails as it does offline. Only logger names are checked, never bitsandbytes' or kernels' wording.
KERNEL_PROBE = """
import importlib, json, logging, sys, types
import bitsandbytes, bitsandbytes.functional as F
import bitsandbytes.backends.cpu.ops as ops
from codellama_hf.demo import runner
seen = []
class Catch(logging.Handler):
    def emit(self, record): seen.append(record.name)
logging.getLogger().addHandler(Catch())
F.has_avx512bf16 = lambda: True
out = {}
for case in ("not installed", "installed, offline"):
    if case == "not installed":
        sys.modules["kernels"] = None
    else:
        def get_kernel(*args, **kwargs):
            logging.getLogger("kernels._internals.hub_check").warning("offline: skipping the hub check")
            raise OSError("offline")
        sys.modules["kernels"] = types.ModuleType("kernels")
        sys.modules["kernels"].get_kernel = get_kernel
        sys.modules["kernels"].__spec__ = importlib.machinery.ModuleSpec("kernels", None)
    seen.clear()
    with runner._optional_kernel_notice() as notice:
        importlib.reload(ops)
    out[case] = {"notice": notice, "leaked": [n for n in seen if n.startswith(runner.OPTIONAL_KERNEL_LOGGERS)],
                 "kernel": vars(ops).get("gemm_4bit_forward_kernel", "absent")}
print(json.dumps(out, default=str))
"""


def test_the_optional_kernel_notice_explains_what_bitsandbytes_did_with_kernels_installed_or_not():
    pytest.importorskip("bitsandbytes")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KERNEL_PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    missing = runner.optional_kernel_line("missing", kernels_installed=False)
    offline = runner.optional_kernel_line("missing", kernels_installed=True)
    assert missing != offline and "not installed here" in missing and "not installed" not in offline
    assert out["not installed"] == {"notice": [missing], "leaked": [], "kernel": None}
    assert out["installed, offline"] == {"notice": [offline], "leaked": [], "kernel": None}


@pytest.mark.parametrize("state", ["not tried", None])
def test_the_optional_kernel_notice_passes_lines_through_when_it_has_nothing_to_explain(state, monkeypatch, caplog):
    from codellama_hf import _compat

    monkeypatch.setattr(_compat, "bnb_optional_cpu_kernel", lambda: state)
    monkeypatch.setitem(sys.modules, "bitsandbytes", sys.modules.get("bitsandbytes") or object())
    with runner._optional_kernel_notice() as notice:
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("one")
        logging.getLogger("kernels.some_module_made_now").warning("two")
        logging.getLogger("bitsandbytes.nn").warning("three")  # not an optional-kernel logger: at once
        assert [r.getMessage() for r in caplog.records] == ["three"]
    assert notice == [] and [r.getMessage() for r in caplog.records] == ["three", "one", "two"]


def test_the_optional_kernel_notice_holds_back_by_logger_and_restores_them(monkeypatch, caplog):
    from codellama_hf import _compat

    monkeypatch.setattr(_compat, "bnb_optional_cpu_kernel", lambda: "missing")
    monkeypatch.setitem(sys.modules, "bitsandbytes", sys.modules.get("bitsandbytes") or object())
    with runner._optional_kernel_notice() as notice:
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("one")
        logging.getLogger("kernels.another_module").warning("two")
    assert len(notice) == 1 and caplog.records == []
    logging.getLogger("kernels.another_module").warning("after")  # outside the demo's load: untouched
    assert [r.getMessage() for r in caplog.records] == ["after"]


def test_without_keep_nothing_is_left_behind(runs):
    run = runs["default"]
    written = re.findall(r"^      wrote (\S+)$", run["stdout"], flags=re.M)
    assert len(written) == 2 and all(TEMP_PREFIX in w for w in written)
    assert not any(Path(w).exists() for w in written)
    assert leftovers(run["tmp"]) == []


def test_keep_keeps_a_meta_folder_and_its_conversion(runs):
    run, kept = runs["keep"], runs["keep"]["dir"]
    assert run["code"] == 0, run["stderr"]
    meta, hf = kept / "meta" / demo.DEMO_VARIANT, kept / "hf" / demo.DEMO_VARIANT
    assert sorted(p.name for p in kept.iterdir()) == ["hf", "meta"]
    assert sorted(p.name for p in meta.iterdir()) == ["checklist.chk", "consolidated.00.pth", "params.json",
                                                      "tokenizer.model"]
    assert {"config.json", "generation_config.json", "tokenizer.model", "model.safetensors.index.json"} <= {
        p.name for p in hf.iterdir()}
    assert f"files     kept in {kept}" in run["stdout"]
    assert leftovers(run["tmp"]) == []


def test_meta_dir_converts_a_real_layout_and_runs_what_the_variant_supports(runs):
    run = runs["meta-dir"]
    out = run["stdout"]
    assert run["code"] == 0, run["stderr"]
    assert "RANDOM" not in out and "from '" in out.splitlines()[0]
    titles = re.findall(r"^\[\d/3\] (.+)$", out, flags=re.M)  # 34b-Instruct: convert, load, chat; no infilling
    assert len(titles) == 3 and "convert" in titles[0] and "text-generation" in titles[2], out
    assert "infilling skipped: CodeLlama-34b-Instruct was not trained for infilling" in out
    assert "converter warning: the checkpoint differs from the CodeLlama-34b-Instruct preset" in out
    assert leftovers(run["tmp"]) == []


# ----- bad input --------------------------------------------------------------------------------------------------

def _hf_folder(tmp: Path) -> Path:
    (tmp / "CodeLlama-7b").mkdir()
    (tmp / "CodeLlama-7b" / "config.json").write_text("{}")
    return tmp / "CodeLlama-7b"


def _renamed_meta(tmp: Path, make_meta_checkpoint) -> Path:
    import shutil

    return Path(shutil.copytree(make_meta_checkpoint("CodeLlama-7b"), tmp / "my-model"))


def _non_empty(tmp: Path) -> Path:
    (tmp / "full").mkdir()
    (tmp / "full" / "mine.txt").write_text("mine")
    return tmp / "full"


# case -> (arguments built in tmp, text the error names)
BAD = {
    "keep not empty": (lambda tmp, mk: ["--keep", str(_non_empty(tmp))], "--keep folder {0!r} is not empty"),
    "keep a file": (lambda tmp, mk: ["--keep", str(_non_empty(tmp) / "mine.txt")], "--keep {0!r} is a file"),
    "meta-dir missing": (lambda tmp, mk: ["--meta-dir", str(tmp / "nowhere"), "--keep", str(tmp / "new")],
                         "{0!r} does not exist"),
    "meta-dir not meta": (lambda tmp, mk: ["--meta-dir", str(_hf_folder(tmp)), "--keep", str(tmp / "new")],
                          "{0!r} is not a Meta checkpoint folder (it looks like a Hugging Face folder already)"),
    "meta-dir unnamed": (lambda tmp, mk: ["--meta-dir", str(_renamed_meta(tmp, mk)), "--keep", str(tmp / "new")],
                         "the folder name 'my-model' is not a variant name"),
    "variant without meta-dir": (lambda tmp, mk: ["--variant", "CodeLlama-7b"], "variant 'CodeLlama-7b' applies to"),
    "max-new-tokens": (lambda tmp, mk: ["--max-new-tokens", "0"], "max_new_tokens 0 is not a positive integer"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_naming_the_value_and_writes_nothing(case, tmp_path, make_meta_checkpoint, capsys):
    build, expected = BAD[case]
    args = build(tmp_path, make_meta_checkpoint)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code = codellama_hf_cli.main(["demo", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("codellama-hf demo: error: "), err
    assert expected.format(args[1]) in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written, not even --keep's folder


def test_bad_input_through_the_real_command_exits_2_without_a_traceback(runs):
    run = runs["bad"]
    assert run["code"] == 2 and run["stdout"] == ""
    assert run["stderr"].splitlines() == [f"codellama-hf demo: error: --keep folder {str(run['dir'])!r} is not "
                                          f"empty; pass a new or empty folder, or delete its contents"]
    assert [p.name for p in run["dir"].iterdir()] == ["mine.txt"]


# ----- failures midway leave nothing -------------------------------------------------------------------------------

def _fail_after_converting(monkeypatch, exc: BaseException):
    real = runner.convert_meta_checkpoint

    def convert_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise exc

    monkeypatch.setattr(runner, "convert_meta_checkpoint", convert_then_fail)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
@pytest.mark.parametrize("keep", [None, "new", "empty"])
def test_a_failure_midway_removes_everything_the_run_wrote(exc, keep, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "empty").mkdir()
    _fail_after_converting(monkeypatch, exc)
    with pytest.raises(type(exc)):
        demo.run_demo(keep=None if keep is None else tmp_path / keep, echo=None)
    assert leftovers(tmp_path / "tmp") == []
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_ctrl_c_in_the_real_command_leaves_nothing(tmp_path):
    proc = start([], tmp_path / "tmp")
    lines = []
    for line in proc.stdout:  # interrupt once the Meta folder is written and the conversion starts
        lines.append(line)
        if line.startswith("[2/5]"):
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=300)
    assert any(line.startswith("[2/5]") for line in lines), "".join(lines) + stderr
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "codellama-hf demo: interrupted"
    assert leftovers(tmp_path / "tmp") == []


# ----- loading: 4-bit where bitsandbytes works, else bf16, saying which ----------------------------------------------

def test_loads_in_4bit_where_bitsandbytes_works():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install '.[bitsandbytes]')")
    result = demo.run_demo(max_new_tokens=2, echo=None)
    assert result.loaded_as.startswith("4-bit nf4 (bitsandbytes)")


def test_without_bitsandbytes_it_loads_bf16_and_says_why(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "bitsandbytes" else real(name, *args))
    lines = []
    result = demo.run_demo(max_new_tokens=2, echo=lines.append)
    assert result.loaded_as.startswith("bfloat16 (bitsandbytes is not installed; pip install")
    assert any(line.startswith(f"      loaded as {result.loaded_as}") for line in lines)
    assert result.infill is not None and result.chat is not None


def test_when_4bit_fails_it_falls_back_to_bf16_and_says_why(monkeypatch):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install '.[bitsandbytes]')")
    import transformers

    class Broken:
        def __init__(self, **kwargs):
            raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(transformers, "BitsAndBytesConfig", Broken)
    result = demo.run_demo(max_new_tokens=2, echo=None)
    assert result.loaded_as == "bfloat16 (4-bit failed: RuntimeError: no 4-bit kernel for this device)"


# ----- the checkpoint it writes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_meta(tmp_path_factory) -> Path:
    return demo.write_demo_checkpoint(tmp_path_factory.mktemp("demo-meta") / "any-name", seed=0)


def test_the_checkpoint_has_7b_instructs_structure_shrunk(demo_meta):
    import torch

    params = json.loads((demo_meta / "params.json").read_text())
    assert params["n_heads"] == 32 and "n_kv_heads" not in params  # 7b: as many kv heads as heads
    assert params["rope_theta"] == 1_000_000 and params["multiple_of"] == 256
    assert params["dim"] == 32 * 8 and params["n_layers"] == 2
    assert sorted(p.name for p in demo_meta.glob("consolidated.*")) == ["consolidated.00.pth"]  # 7b: one shard
    sd = torch.load(demo_meta / "consolidated.00.pth", weights_only=True)
    ffn = 256 * math.ceil(int(2 * 4 * params["dim"] / 3) / 256)  # Meta's FeedForward rounding, written out here
    assert sd["layers.0.feed_forward.w1.weight"].shape == (ffn, params["dim"]) == (768, 256)
    assert {name.removesuffix(".weight").split(".")[-1] for name in sd} == set(META_SPLIT)
    assert len(sd) == 2 + 2 * 9 + 1 and all(t.dtype == torch.bfloat16 for t in sd.values())
    rows = MetaReference(demo_meta / "tokenizer.model").sp.get_piece_size()
    assert sd["tok_embeddings.weight"].shape[0] == sd["output.weight"].shape[0] == rows  # every id decodes
    for line in (demo_meta / "checklist.chk").read_text().splitlines():
        md5, name = line.split()
        assert hashlib.md5((demo_meta / name).read_bytes()).hexdigest() == md5


def test_the_weights_are_seeded(demo_meta, tmp_path):
    again = demo.write_demo_checkpoint(tmp_path / "again", seed=0)
    other = demo.write_demo_checkpoint(tmp_path / "other", seed=1)
    same = (demo_meta / "consolidated.00.pth").read_bytes()
    assert (again / "consolidated.00.pth").read_bytes() == same
    assert (other / "consolidated.00.pth").read_bytes() != same


def test_make_demo_model_writes_a_converted_folder(tmp_path):
    from transformers import AutoConfig

    folder = demo.make_demo_model(tmp_path)
    assert folder == tmp_path / "hf" / demo.DEMO_VARIANT
    config = AutoConfig.from_pretrained(folder)
    assert (config.variant, config.chat_format, config.infilling) == ("CodeLlama-7b-Instruct", "inst", True)
    assert (config.num_attention_heads, config.num_key_value_heads) == (32, 32)
    assert config.rope_parameters["rope_theta"] == 1e6


# ----- its tokenizer ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    pytest.importorskip("sentencepiece", reason="the reference needs sentencepiece (pip install '.[dev]')")
    import shutil

    from codellama_hf import CodeLlamaTokenizer

    folder = tmp_path_factory.mktemp("demo-tok")
    shutil.copyfile(demo.DEMO_TOKENIZER, folder / "tokenizer.model")
    return CodeLlamaTokenizer.from_pretrained(folder, chat_format="inst"), MetaReference(folder / "tokenizer.model")


def test_the_shipped_tokenizer_is_small_and_has_code_llamas_control_pieces(demo_tokenizer):
    tok, meta = demo_tokenizer
    assert demo.DEMO_TOKENIZER.stat().st_size < 16_000
    assert [meta.sp.id_to_piece(i) for i in (meta.prefix_id, meta.suffix_id, meta.middle_id, meta.eot_id)] == [
        "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
    assert tok.control_token_ids == {"prefix_token_id": meta.prefix_id, "suffix_token_id": meta.suffix_id,
                                     "middle_token_id": meta.middle_id, "eot_token_id": meta.eot_id,
                                     "step_token_id": None}
    assert meta.sp.piece_to_id("<0xFF>") != 0 and meta.sp.piece_to_id("☺") != 0  # byte fallback; Meta's smiley


def test_the_shipped_tokenizer_encodes_as_sentencepiece_and_builds_metas_prompts(demo_tokenizer):
    tok, meta = demo_tokenizer
    for text in stdlib_snippets(40, seed=3) + ["héllo ☺ 你好 🎉", "\t\tx = 1\n"]:
        assert tok(text)["input_ids"] == meta.encode(text, bos=True)
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    prefix, suffix = demo.INFILL_CODE.split("<FILL_ME>")
    for suffix_first in (False, True):
        assert tok.infilling_prompt_ids(prefix, suffix, suffix_first=suffix_first) == meta.infilling_prompt(
            prefix, suffix, suffix_first=suffix_first)
    chat = demo.CHAT + [{"role": "assistant", "content": "sorted(x, key=lambda p: p[1])"},
                        {"role": "user", "content": "Descending?"}]
    for dialog in (demo.CHAT, chat):
        assert tok.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False) == meta.chat_inst(dialog)


def test_the_script_regenerates_the_shipped_tokenizer(tmp_path):
    pytest.importorskip("sentencepiece", reason="the script needs sentencepiece (pip install '.[dev]')")
    import sentencepiece as spm

    spec = importlib.util.spec_from_file_location("make_tokenizer", demo.DEMO_TOKENIZER.with_name("make_tokenizer.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fresh = script.build(tmp_path / "tokenizer.model")

    def pieces(path: Path) -> list[str]:
        sp = spm.SentencePieceProcessor(model_file=str(path))
        return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]

    assert pieces(fresh) == pieces(demo.DEMO_TOKENIZER), \
        "demo/data/tokenizer.model is stale: run src/codellama_hf/demo/data/make_tokenizer.py"


def test_the_library_functions_refuse_a_non_empty_folder(tmp_path):
    full = _non_empty(tmp_path)
    with pytest.raises(UserInputError, match=r"--keep folder .* is not empty"):
        demo.run_demo(keep=full, echo=None)
    with pytest.raises(UserInputError, match=r"exists and is not an empty folder; pass a new or empty folder"):
        demo.write_demo_checkpoint(full)
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
