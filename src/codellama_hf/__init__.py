"""Meta's Code Llama family as a first-class model type in Hugging Face Transformers 5."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import MODEL_TYPE, CodeLlamaConfig
from .modeling import CodeLlamaForCausalLM, CodeLlamaModel
from .variants import PRESETS, VARIANTS, Variant, get_variant

AutoConfig.register(MODEL_TYPE, CodeLlamaConfig)
AutoModel.register(CodeLlamaConfig, CodeLlamaModel)
AutoModelForCausalLM.register(CodeLlamaConfig, CodeLlamaForCausalLM)

__version__ = "0.1.0"
__all__ = ["CodeLlamaConfig", "CodeLlamaModel", "CodeLlamaForCausalLM", "VARIANTS", "PRESETS", "Variant",
           "get_variant", "MODEL_TYPE"]
