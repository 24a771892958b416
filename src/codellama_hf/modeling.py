"""CodeLlamaModel / CodeLlamaForCausalLM: Llama's architecture unchanged, bound to CodeLlamaConfig."""

from transformers import LlamaForCausalLM, LlamaModel

from .configuration import CodeLlamaConfig
from .errors import UserInputError

# Transformers 4 loading keywords that Transformers 5 removed, and what replaces them.
REMOVED_KWARGS = {
    "load_in_8bit": "quantization_config=BitsAndBytesConfig(load_in_8bit=True)",
    "load_in_4bit": "quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4')",
}


class _RefusesRemovedKwargs:
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Differs: Transformers 5 dies on these with a TypeError from __init__ that names neither cause nor fix.
        for key, fix in REMOVED_KWARGS.items():
            if kwargs.get(key) is not None:
                raise UserInputError(f"{key}={kwargs[key]!r} was removed in Transformers 5; pass {fix} instead "
                                     f"(from transformers import BitsAndBytesConfig)")
        return super().from_pretrained(*args, **kwargs)


class CodeLlamaModel(_RefusesRemovedKwargs, LlamaModel):
    config_class = CodeLlamaConfig  # differs here: the Auto factories route CodeLlamaConfig to it


class CodeLlamaForCausalLM(_RefusesRemovedKwargs, LlamaForCausalLM):
    config_class = CodeLlamaConfig  # differs here: the Auto factories route CodeLlamaConfig to it
