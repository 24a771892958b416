"""The `vllm.general_plugins` entry point (setup.cfg): vLLM runs a converted folder on its own Llama, no remote code.

vLLM calls `register()` in every process it starts (the API server, the engine core, each worker, Ray workers
included) before it reads a model. A converted folder says `CodeLlamaForCausalLM` in config.json; that model is
Llama's, differences only in config and tokenizer, so vLLM's native Llama runs it. Importing codellama_hf registers
the config (model_type `codellama_hf`) and CodeLlamaTokenizer with Transformers' Auto classes, which vLLM uses to
read the folder. vLLM is imported here only when vLLM itself calls in: this package does not depend on it.
"""

from __future__ import annotations

ARCHITECTURES = {"CodeLlamaForCausalLM": "vllm.model_executor.models.llama:LlamaForCausalLM"}


def register() -> bool:
    """Map our architectures onto vLLM's Llama; False (and nothing imported) where vLLM is not installed."""
    try:
        from vllm import ModelRegistry
    except ImportError:
        return False
    import codellama_hf  # noqa: F401 - registers AutoConfig/AutoTokenizer for model_type codellama_hf

    known = set(ModelRegistry.get_supported_archs())
    for arch, target in ARCHITECTURES.items():
        if arch not in known:  # a string target: vLLM imports its Llama lazily, in the process that needs it
            ModelRegistry.register_model(arch, target)
    return True
