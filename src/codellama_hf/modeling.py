"""CodeLlamaModel / CodeLlamaForCausalLM: Llama's architecture unchanged, bound to CodeLlamaConfig."""

from transformers import LlamaForCausalLM, LlamaModel

from .configuration import CodeLlamaConfig


class CodeLlamaModel(LlamaModel):
    config_class = CodeLlamaConfig  # differs only here: the Auto factories route CodeLlamaConfig to it


class CodeLlamaForCausalLM(LlamaForCausalLM):
    config_class = CodeLlamaConfig  # differs only here: the Auto factories route CodeLlamaConfig to it
