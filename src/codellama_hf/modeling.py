"""CodeLlamaModel / CodeLlamaForCausalLM: Llama's architecture unchanged, bound to CodeLlamaConfig."""

from transformers import LlamaForCausalLM, LlamaModel

from . import _compat
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
        model = super().from_pretrained(*args, **kwargs)
        keep_loaded_4bit_state_for_saving(model)
        return model


def keep_loaded_4bit_state_for_saving(model) -> None:
    """Make `save_pretrained` write the 4-bit state that was loaded, also after inference on an AVX512-BF16 CPU.

    Why: on such a CPU, bitsandbytes' first inference repacks each 4-bit weight for its fused kernel, in place, and
    rounds the block scales (absmax) to bfloat16 on the way, un-nesting double quantization. Saving then runs its
    "best-effort inverse", which quantizes those rounded scales anew (nested) or leaves them transposed in bfloat16
    (not nested): the folder no longer holds the loaded model, and each save, load and generate cycle drifts further.
    The packed 4-bit codes come back exactly; only the scales are lost. So keep the loaded scales (1/32 of the 4-bit
    weight bytes) and put them back, in the module and in what is saved. Other devices never repack: no-op there.
    """
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None or not _compat.bnb_repacks_for_cpu(module):
            continue
        module._loaded_4bit_scales = {k: getattr(state, k, None) for k in _SCALE_FIELDS}
        module.register_state_dict_post_hook(_restore_loaded_4bit_scales)


_SCALE_FIELDS = ("absmax", "nested", "state2", "offset", "dtype")


def _restore_loaded_4bit_scales(module, state_dict, prefix, local_metadata) -> None:
    state = module.weight.quant_state  # bitsandbytes' _save_to_state_dict has just unpacked it
    for key, value in module._loaded_4bit_scales.items():
        setattr(state, key, value)
    for key, value in state.as_dict(packed=True).items():
        state_dict[f"{prefix}weight.{key}"] = value.detach()


class _NamesTheInstalledPackage:
    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """Differs: does nothing, so saving never copies this package's source into a folder (remote_code.py)."""


class CodeLlamaModel(_NamesTheInstalledPackage, _RefusesRemovedKwargs, LlamaModel):
    config_class = CodeLlamaConfig  # differs here: the Auto factories route CodeLlamaConfig to it


class CodeLlamaForCausalLM(_NamesTheInstalledPackage, _RefusesRemovedKwargs, LlamaForCausalLM):
    config_class = CodeLlamaConfig  # differs here: the Auto factories route CodeLlamaConfig to it
