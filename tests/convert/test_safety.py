"""Bad input fails cleanly through the real command line: one error line, exit 2, no traceback, no pickled
code run, nothing half-written at OUT_DIR, an existing OUT_DIR untouched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codellama_hf import convert_meta_checkpoint
from codellama_hf.errors import UserInputError
from tests.fixtures_convert import copy_meta, write_checklist

CLI = Path(sys.executable).with_name("codellama-hf")
SCRIPT = Path(__file__).resolve().parents[2] / "conversion" / "convert_codellama_weights.py"
SENTINEL = "keep-me.txt"


class RunsCode:
    """Pickles as a call to os.system: what a booby-trapped .pth would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _drop(folder: Path, name: str, *, relist: bool = False) -> None:
    (folder / name).unlink()
    if relist:
        write_checklist(folder)


def _truncate(folder: Path) -> None:
    shard = folder / "consolidated.01.pth"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _garbage(folder: Path) -> None:
    shard = folder / "consolidated.01.pth"
    shard.write_bytes(os.urandom(shard.stat().st_size))


def _flip_a_weight_byte(folder: Path) -> None:
    """Still a valid shard (so only the md5 can tell): one byte inside a tensor's data changes."""
    shard = folder / "consolidated.00.pth"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def _params(folder: Path, **changes) -> None:
    import json

    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, **changes}))
    write_checklist(folder)


def _booby_trap(folder: Path) -> None:
    shard = folder / "consolidated.00.pth"
    state = torch.load(shard, weights_only=True)
    state["layers.0.attention.wq.weight"] = RunsCode(folder.parent / "PWNED")
    torch.save(state, shard)
    write_checklist(folder)


# case -> (variant, damage, extra CLI args, the error must mention)
CASES = {
    "not a meta folder": ("CodeLlama-7b", lambda f: [p.unlink() for p in f.glob("consolidated.*")], [],
                          "is not a Meta checkpoint folder"),
    "shard missing (listed)": ("CodeLlama-13b", lambda f: _drop(f, "consolidated.01.pth"), [],
                               "consolidated.01.pth is listed in checklist.chk but missing"),
    "shard missing (gap)": ("CodeLlama-34b", lambda f: [_drop(f, "consolidated.01.pth"), _drop(f, "checklist.chk")],
                            [], "shard consolidated.01.pth is missing"),
    "shard missing (last, unlisted)": ("CodeLlama-13b", lambda f: _drop(f, "consolidated.01.pth", relist=True), [],
                                       "a shard is missing or extra"),
    "shard extra": ("CodeLlama-13b", lambda f: shutil.copy(f / "consolidated.01.pth", f / "consolidated.02.pth"), [],
                    "consolidated.02.pth is not listed in checklist.chk"),
    "shard extra (unlisted)": ("CodeLlama-34b", lambda f: [shutil.copy(f / "consolidated.03.pth",
                                                                       f / "consolidated.04.pth"),
                                                           _drop(f, "checklist.chk")], [],
                               "cannot be split over 5 shards"),
    "shard truncated": ("CodeLlama-13b", _truncate, [], "cannot read shard consolidated.01.pth: truncated or corrupt"),
    "shard corrupt": ("CodeLlama-13b", _garbage, [], "cannot read shard consolidated.01.pth: truncated or corrupt"),
    "params n_layers": ("CodeLlama-7b", lambda f: _params(f, n_layers=3), [], "lacks layers.1.attention.wq.weight"),
    "params dim": ("CodeLlama-34b", lambda f: _params(f, dim=1024), [], "params.json belongs to another model"),
    "params vocab": ("CodeLlama-7b", lambda f: _params(f, vocab_size=32000), [], "vocab_size 32000"),
    "checksum": ("CodeLlama-7b", _flip_a_weight_byte, ["--verify"], "checksum mismatch for consolidated.00.pth"),
    "pickled code": ("CodeLlama-7b", _booby_trap, [], "refusing to load consolidated.00.pth"),
    "output not empty": ("CodeLlama-7b", lambda f: None, ["--no-overwrite-marker"], "is not empty; pass --overwrite"),
}


@pytest.fixture(scope="module")
def failed_runs(make_meta_checkpoint, tmp_path_factory):
    """Every bad case, run through the real CLI at once (they are independent; imports dominate)."""
    runs = {}
    for case, (variant, damage, extra, _) in CASES.items():
        root = tmp_path_factory.mktemp("case")
        src = copy_meta(make_meta_checkpoint(variant, n_layers=1), root / "in")
        damage(src)
        out = root / "out" / "hf"
        out.mkdir(parents=True)
        (out / SENTINEL).write_text(case)
        overwrite = [] if "--no-overwrite-marker" in extra else ["--overwrite"]
        args = [a for a in extra if a != "--no-overwrite-marker"] + overwrite
        proc = subprocess.Popen([str(CLI), "convert", str(src), str(out), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        runs[case] = (proc, src, out)
    done = {}
    for case, (proc, src, out) in runs.items():
        stdout, stderr = proc.communicate(timeout=600)
        done[case] = (proc.returncode, stdout, stderr, src, out)
    return done


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_with_one_line_and_leaves_output_untouched(case, failed_runs):
    code, stdout, stderr, src, out = failed_runs[case]
    assert code == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("codellama-hf convert: error: "), stderr
    assert CASES[case][3] in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [SENTINEL] and (out / SENTINEL).read_text() == case
    assert sorted(p.name for p in out.parent.iterdir()) == ["hf"]  # no .partial or .old folder left


def test_pickled_code_never_runs(failed_runs):
    _, _, _, src, _ = failed_runs["pickled code"]
    marker = src.parent / "PWNED"
    assert not marker.exists()
    with pytest.raises(UserInputError, match="refusing to load"):  # in-process too
        convert_meta_checkpoint(src, src.parent / "again", quiet=True)
    assert not marker.exists()
    torch.load(src / "consolidated.00.pth", weights_only=False)  # the control: unpickled, the trap does fire
    assert marker.exists()


def test_script_and_cli_share_the_options(make_meta_checkpoint, tmp_path):
    src = make_meta_checkpoint("CodeLlama-7b-Python", n_layers=1)
    done = subprocess.run([sys.executable, str(SCRIPT), str(src), str(tmp_path / "hf"), "--format", "llama",
                           "--dtype", "float16"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "convert: 100%" in done.stderr and "B/s" in done.stderr  # tqdm by bytes, on stderr
    assert done.stdout == ""
    assert '"dtype": "float16"' in (tmp_path / "hf" / "config.json").read_text()
    help_text = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    for option in ("--variant", "--dtype", "--max-shard-size", "--format", "--verify", "--overwrite", "--quiet"):
        assert option in help_text


def test_failure_while_writing_removes_the_partial_folder_and_keeps_the_old_one(make_meta_checkpoint, tmp_path):
    """Replicated norms that differ between shards are only seen while writing, after the folder is begun."""
    src = copy_meta(make_meta_checkpoint("CodeLlama-13b", n_layers=1), tmp_path / "in")
    shard = torch.load(src / "consolidated.01.pth", weights_only=True)
    shard["norm.weight"] = shard["norm.weight"] + 1
    torch.save(shard, src / "consolidated.01.pth")
    out = tmp_path / "out" / "hf"
    out.mkdir(parents=True)
    (out / SENTINEL).write_text("old")
    with pytest.raises(UserInputError, match="norm.weight differs between consolidated.00.pth and consolidated.01"):
        convert_meta_checkpoint(src, out, overwrite=True, quiet=True)
    assert [p.name for p in out.parent.iterdir()] == ["hf"] and [p.name for p in out.iterdir()] == [SENTINEL]


def test_overwrite_replaces_the_folder_whole(make_meta_checkpoint, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / SENTINEL).write_text("old")
    convert_meta_checkpoint(make_meta_checkpoint("CodeLlama-7b", n_layers=1), out, overwrite=True, quiet=True)
    assert not (out / SENTINEL).exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_an_empty_output_folder_is_used(make_meta_checkpoint, tmp_path):
    (tmp_path / "hf").mkdir()
    convert_meta_checkpoint(make_meta_checkpoint("CodeLlama-7b", n_layers=1), tmp_path / "hf", quiet=True)
    assert (tmp_path / "hf" / "config.json").is_file()


def test_output_inside_the_input_is_refused(make_meta_checkpoint, tmp_path):
    src = copy_meta(make_meta_checkpoint("CodeLlama-7b", n_layers=1), tmp_path)
    with pytest.raises(UserInputError, match="would replace the input folder"):
        convert_meta_checkpoint(src, src, overwrite=True, quiet=True)
    assert (src / "consolidated.00.pth").is_file()


# Runs the real CLI, but stops for good right after the first tensor is written, so the kill lands mid-run.
PAUSED = """
import sys, time
from pathlib import Path
from codellama_hf.convert import converter as engine
real_write_file = engine.write_file
def paused_write_file(path, entries, chunks, on_bytes):
    def chunks_then_pause(entry):
        yield from chunks(entry)
        Path(sys.argv[1]).write_text(str(path))
        time.sleep(600)
    real_write_file(path, entries, chunks_then_pause, on_bytes)
engine.write_file = paused_write_file
import codellama_hf_cli
sys.exit(codellama_hf_cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("existing", [False, True])
def test_sigkill_mid_run_leaves_nothing_that_looks_complete(existing, make_meta_checkpoint, tmp_path):
    src = make_meta_checkpoint("CodeLlama-13b", n_layers=1)
    out, marker = tmp_path / "out" / "hf", tmp_path / "writing"
    if existing:
        out.mkdir(parents=True)
        (out / SENTINEL).write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, str(marker), "convert", str(src), str(out), "--quiet",
                             "--overwrite"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "timed out"
    partial = Path(marker.read_text()).parent
    assert partial.name.startswith(".hf.partial-") and partial.parent == out.parent
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    if existing:
        assert [p.name for p in out.iterdir()] == [SENTINEL]
    else:
        assert not out.exists()
    assert not (partial / "config.json").exists()  # the leftover is hidden, named partial, and incomplete
    # the next run says so, and still converts
    done = subprocess.run([str(CLI), "convert", str(src), str(out), "--quiet", "--overwrite"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "left by an interrupted conversion" in done.stderr, done.stderr
    assert (out / "config.json").is_file()


def test_too_little_disk_space_fails_before_writing(make_meta_checkpoint, tmp_path, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UserInputError, match=r"the weights need 0\.\d GB but .* has 0\.0 GB free"):
        convert_meta_checkpoint(make_meta_checkpoint("CodeLlama-7b", n_layers=1), tmp_path / "hf", quiet=True)
    assert list(tmp_path.iterdir()) == []
