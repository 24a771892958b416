"""Every notebook runs top to bottom offline, and every notebook in the repo is kept with its outputs stripped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds; a cell of ours takes a few
KERNEL = "codellama-hf-tests"


def repo_notebooks() -> list[Path]:
    """Notebooks git tracks or would add (untracked, not ignored), wherever they are in the repo."""
    done = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.ipynb"], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:  # not a git checkout (an sdist, say): every notebook outside the venv
        return [p for p in ROOT.rglob("*.ipynb") if ".venv" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    return [ROOT / line for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a kernel running this interpreter (not whatever `python3` kernelspec the machine has)."""
    import os

    data = tmp_path_factory.mktemp("jupyter")
    spec = data / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "codellama_hf tests", "language": "python"}))
    return {"JUPYTER_PATH": str(data), "TMPDIR": str(tmp_path_factory.mktemp("notebook-tmp")),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1", **{k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}}


def test_the_notebooks_are_there_and_listed_in_the_readme():
    readme = (ROOT / "notebooks" / "README.md").read_text()
    listed = set(re.findall(r"\(([\w.-]+\.ipynb)\)", readme))
    assert {"01-quickstart.ipynb", "02-convert-meta-checkpoint.ipynb", "04-instruct-chat.ipynb"} <= listed
    assert listed == {p.name for p in NOTEBOOKS}, "notebooks/README.md must link every notebook, and only those"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_offline_top_to_bottom(path, kernel_env, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert ran and all(c.execution_count is not None for c in ran)
    errors = [o for c in ran for o in c.outputs if o.output_type == "error"]
    assert not errors
    left = [p.name for p in Path(kernel_env["TMPDIR"]).iterdir() if p.name.startswith("codellama-")]
    assert not left, f"the notebook left {left} in its temporary folder"


@pytest.mark.parametrize("path", repo_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.relative_to(ROOT)}: code cells {dirty} keep outputs or execution counts; strip them "
                       f"(in Jupyter: Edit > Clear Outputs of All Cells, then save)")
