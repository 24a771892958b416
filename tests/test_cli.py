"""The command-line front: instant help, one-line errors, the variants table."""

import subprocess
import sys
from pathlib import Path

import pytest

import codellama_hf_cli

CLI = str(Path(sys.executable).with_name("codellama-hf"))
COMMANDS = sorted(next(a for a in codellama_hf_cli.build_parser()._actions if a.dest == "command").choices)
# --help through main(), then which heavy modules it imported
HELP = """
import sys, codellama_hf_cli
try:
    codellama_hf_cli.main(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code, "imported", sorted({"torch", "transformers", "codellama_hf"} & set(sys.modules)))
"""


def run(*args):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def test_building_the_parser_imports_neither_torch_nor_transformers():
    code = "import sys, codellama_hf_cli; codellama_hf_cli.build_parser(); print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_help_lists_the_commands():
    done = run("--help")
    assert done.returncode == 0
    assert {"convert", "variants", "demo"} <= set(COMMANDS)
    assert all(f"    {command}" in done.stdout for command in COMMANDS), done.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_shows_examples_without_importing_torch_or_transformers(command):
    args = ["--help"] if command is None else [command, "--help"]
    done = subprocess.run([sys.executable, "-c", HELP, *args], capture_output=True, text=True, timeout=60)
    *text, last = done.stdout.rstrip("\n").splitlines()
    assert last == "exit 0 imported []", done.stderr
    examples = "\n".join(text).split("\nexamples:\n", 1)
    assert len(examples) == 2, "\n".join(text)
    runs = [line.strip() for line in examples[1].splitlines() if line.strip()]
    assert runs and all(line.startswith("codellama-hf ") for line in runs)
    assert command is None or any(line.startswith(f"codellama-hf {command}") for line in runs)


@pytest.mark.parametrize("args", [(), ("nonsense",)])
def test_bad_command_line_exits_2_with_usage_and_no_traceback(args):
    done = run(*args)
    assert done.returncode == 2
    assert "usage: codellama-hf" in done.stderr and "Traceback" not in done.stderr


def test_variants_prints_the_twelve_presets():
    done = run("variants")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.strip().splitlines()
    assert header.split("\t")[:3] == ["name", "flavor", "hidden_size"]
    assert [r.split("\t")[0] for r in rows][:3] == ["CodeLlama-7b", "CodeLlama-7b-Python", "CodeLlama-7b-Instruct"]
    assert len(rows) == 12
    seventy = dict(zip(header.split("\t"), rows[-1].split("\t")))
    assert (seventy["rope_theta"], seventy["max_position_embeddings"], seventy["chat_format"]) == ("10000.0", "4096", "step")


# A command through main(), then which heavy modules it imported; the answer itself goes to stdout before that.
RUN = """
import sys, codellama_hf_cli
code = codellama_hf_cli.main(sys.argv[1:])
print("exit", code, "imported", sorted({"torch", "transformers", "codellama_hf"} & set(sys.modules)))
"""


@pytest.mark.parametrize("args", [("variants",), ("estimate-memory", "CodeLlama-70b"),
                                  ("estimate-memory", "CodeLlama-34b", "--quantization", "4bit", "--json")])
def test_questions_that_need_no_model_import_neither_torch_nor_the_registering_package(args):
    done = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=60)
    *answer, last = done.stdout.rstrip("\n").splitlines()
    assert last == "exit 0 imported []", done.stderr
    assert answer and "Traceback" not in done.stderr


def test_estimate_memory_of_a_name_equals_the_planning_layers_estimate():
    import json

    from codellama_hf import estimate_memory

    done = run("estimate-memory", "CodeLlama-34b", "--quantization", "4bit", "--context", "4096", "--json")
    assert done.returncode == 0, done.stderr
    want = estimate_memory("CodeLlama-34b", quantization="4bit", context=4096).to_json()
    assert json.loads(done.stdout) == json.loads(json.dumps(want))
