"""The vLLM plugin (codellama_hf/vllm_plugin.py) without vLLM: declared as vLLM finds it, a no-op where vLLM is
absent, and the mapping it registers. With vLLM itself, tests/vllm/ (the vLLM lane) runs converted folders."""

from __future__ import annotations

import configparser
import sys
import types
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_the_entry_point_is_declared_for_vllm():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    plugins = cfg["options.entry_points"]["vllm.general_plugins"].strip().splitlines()
    assert plugins == ["codellama_hf = codellama_hf.vllm_plugin:register"]


def test_without_vllm_registration_is_a_no_op(monkeypatch):
    from codellama_hf import vllm_plugin

    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    assert vllm_plugin.register() is False


def test_registers_our_architecture_onto_vllms_llama_once(monkeypatch):
    from codellama_hf import vllm_plugin

    calls = []
    registry = types.SimpleNamespace(get_supported_archs=lambda: ["LlamaForCausalLM"] + [a for a, _ in calls],
                                     register_model=lambda arch, target: calls.append((arch, target)))
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(ModelRegistry=registry))
    assert vllm_plugin.register() is True
    assert vllm_plugin.register() is True  # every vLLM process calls it; a second call registers nothing new
    assert calls == [("CodeLlamaForCausalLM", "vllm.model_executor.models.llama:LlamaForCausalLM")]


def test_importing_the_package_does_not_import_vllm():
    import subprocess

    code = "import sys, codellama_hf, codellama_hf.vllm_plugin; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__('os').environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
