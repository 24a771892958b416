"""Meta's Code Llama family as a first-class model type in Hugging Face Transformers 5."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .configuration import MODEL_TYPE, CodeLlamaConfig
from .convert import convert_meta_checkpoint
from .device_maps import cpu_disk_device_map, estimate_memory
from .modeling import CodeLlamaForCausalLM, CodeLlamaModel
from .pipelines import CodeInfillingPipeline, register_pipeline
from .tokenization import CodeLlamaTokenizer
from .training.peft_defaults import register_when_peft_is_imported
from .variants import PRESETS, VARIANTS, Variant, get_variant

AutoConfig.register(MODEL_TYPE, CodeLlamaConfig)
AutoModel.register(CodeLlamaConfig, CodeLlamaModel)
AutoModelForCausalLM.register(CodeLlamaConfig, CodeLlamaForCausalLM)
AutoTokenizer.register(CodeLlamaConfig, tokenizer_class=CodeLlamaTokenizer)
register_pipeline()  # pipeline("code-infilling")
register_when_peft_is_imported()  # PEFT's Llama defaults for our model type, once peft is imported (never imports it)

__version__ = "0.1.0"
__all__ = ["CodeLlamaConfig", "CodeLlamaModel", "CodeLlamaForCausalLM", "VARIANTS", "PRESETS", "Variant",
           "CodeLlamaTokenizer", "get_variant", "MODEL_TYPE", "convert_meta_checkpoint", "CodeInfillingPipeline",
           "cpu_disk_device_map", "estimate_memory"]
