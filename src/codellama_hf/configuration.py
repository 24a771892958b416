"""CodeLlamaConfig: Llama's fields plus the Code Llama facts, and `capabilities()`: what a model and its tokenizer
can do (infilling, FIM ids, chat format, context, stop ids), decided here once for the pipelines, the server, the
training transform and the docs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from . import remote_code
from .errors import UserInputError
from .variants import (CHAT_FORMATS, FIM_IDS_32016, FLAVORS, INFILLING_VARIANTS, PRESETS, STEP_ID_70B_INSTRUCT,
                       Variant, get_variant, variant_in_name)

logger = logging.getLogger(__name__)

MODEL_TYPE = "codellama_hf"  # no Transformers release uses it ("code_llama" is a tokenizer-only key there)

# Llama fields that identify a variant in a stock `model_type: llama` config.json.
_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "vocab_size")
# Code Llama facts, filled in when every candidate variant agrees on them.
_FACT_FIELDS = ("variant", "flavor", "infilling", "chat_format", "prefix_token_id", "suffix_token_id",
                "middle_token_id", "eot_token_id", "step_token_id")


@strict
class CodeLlamaConfig(LlamaConfig):
    """Differs from LlamaConfig: knows the 12 variants and adds their flavor, infilling ids and chat format.

    A fact left as None is unknown (e.g. a stock checkpoint whose shapes fit several variants).
    """

    model_type = MODEL_TYPE

    variant: str | None = None
    flavor: str | None = None  # "base" | "python" | "instruct"
    infilling: bool | None = None  # trained for infilling
    prefix_token_id: int | None = None
    suffix_token_id: int | None = None
    middle_token_id: int | None = None
    eot_token_id: int | None = None
    step_token_id: int | None = None  # 70b-Instruct's turn marker `<step>`
    chat_format: str | None = None  # "none" | "inst" | "step"

    def validate_architecture(self):
        super().validate_architecture()
        if self.variant is not None:
            get_variant(self.variant)
        if self.flavor is not None and self.flavor not in FLAVORS:
            raise UserInputError(f"unknown flavor {self.flavor!r}; expected one of: {', '.join(FLAVORS)}")
        if self.chat_format is not None:
            check_chat_format(self.chat_format)

    @classmethod
    def from_variant(cls, name: str, **overrides) -> CodeLlamaConfig:
        """The exact config of a released variant; `overrides` replace fields (e.g. a tiny test model)."""
        return cls(**{**preset_fields(get_variant(name)), **overrides})

    @property
    def fim_token_ids(self) -> dict[str, int] | None:
        """Prefix/suffix/middle/end-of-infill ids, or None where the vocab has no infilling tokens."""
        ids = {k: getattr(self, k) for k in FIM_IDS_32016}
        return None if None in ids.values() else ids

    @property
    def stop_token_ids(self) -> list[int]:
        """EOS, plus EOT where the variant infills and `<step>` where it chats in Source:/<step> turns."""
        extra = [self.eot_token_id if self.infilling else None, self.step_token_id]
        return [self.eos_token_id] + [i for i in extra if i is not None]

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        # Differs: the folder also loads where codellama_hf is installed but not imported (remote_code.py says how).
        self.auto_map = dict(remote_code.CONFIG_AUTO_MAP)
        remote_code.write_files(save_directory, remote_code.MODEL_FILES)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Differs: does nothing, so saving never copies this package's source into a folder (remote_code.py)."""

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # Differs: a stock `model_type: llama` config (as published on the hub) is read as Code Llama,
        # with the facts its shapes, vocab and rope theta decide.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "llama":
            facts = identify(config_dict, name=str(pretrained_model_name_or_path))
            config_dict = {**config_dict, **facts, "model_type": MODEL_TYPE}
        return config_dict, kwargs


def check_chat_format(chat_format: str) -> str:
    """The chat format, if it is one of CHAT_FORMATS; else UserInputError naming them (config and tokenizer alike)."""
    if chat_format not in CHAT_FORMATS:
        raise UserInputError(f"unknown chat_format {chat_format!r}; expected one of: {', '.join(CHAT_FORMATS)}")
    return chat_format


def preset_fields(v: Variant) -> dict:
    """CodeLlamaConfig keyword arguments for a preset row."""
    has_fim = v.vocab_size == 32016
    return dict(
        variant=v.name, flavor=v.flavor, infilling=v.infilling, chat_format=v.chat_format,
        hidden_size=v.hidden_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, num_key_value_heads=v.num_key_value_heads,
        intermediate_size=v.intermediate_size, vocab_size=v.vocab_size,
        max_position_embeddings=v.max_position_embeddings,
        rope_parameters={"rope_theta": v.rope_theta, "rope_type": "default"},
        **{k: (i if has_fim else None) for k, i in FIM_IDS_32016.items()},
        step_token_id=STEP_ID_70B_INSTRUCT if v.chat_format == "step" else None,
        bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5, tie_word_embeddings=False, dtype="bfloat16",
    )


def _rope_theta(config_dict: dict) -> float | None:
    params = config_dict.get("rope_parameters") or {}
    return float(params.get("rope_theta", config_dict.get("rope_theta", 10000.0)))


def identify(config_dict: dict, *, name: str | None = None) -> dict:
    """Code Llama facts of a stock Llama config: those on which every matching preset agrees.

    Shapes, vocab and rope theta decide; where several variants share them (e.g. 7b and 7b-Instruct), the
    variant that `name` (a hub id or a folder) is named after decides among them, else the facts they
    disagree on, the variant name among them, stay None (unknown).
    """
    theta = _rope_theta(config_dict)
    kv = config_dict.get("num_key_value_heads") or config_dict.get("num_attention_heads")
    got = {**{k: config_dict.get(k) for k in _SHAPE_FIELDS}, "num_key_value_heads": kv}
    matches = [preset_fields(v) for v in PRESETS
               if all(getattr(v, k) == got[k] for k in _SHAPE_FIELDS) and v.rope_theta == theta]
    if not matches:
        logger.warning("checkpoint shapes %s with rope theta %s match no Code Llama variant; loading it "
                       "with every Code Llama fact unknown", got, theta)
        return {}
    named = variant_in_name(name) if name else None
    if named is not None and named.name in [m["variant"] for m in matches]:
        matches = [m for m in matches if m["variant"] == named.name]
    elif named is not None:
        logger.warning("%r is named after %s, but its shapes fit other variants; ignoring the name", name,
                       named.name)
    facts = {k: matches[0][k] for k in _FACT_FIELDS if all(m[k] == matches[0][k] for m in matches)}
    if "variant" not in facts:
        logger.info("checkpoint fits %d variants; the variant is unknown", len(matches))
    return facts


def code_llama_facts(config) -> CodeLlamaConfig:
    """The model's CodeLlamaConfig; a stock Llama config (a `--format llama` folder loaded as Llama) is identified."""
    if isinstance(config, CodeLlamaConfig):
        return config
    fields = {**config.to_dict(), **identify(config.to_dict(), name=getattr(config, "_name_or_path", None))}
    fields.pop("model_type", None)
    return CodeLlamaConfig(**fields)


INFILLING = ("trained", "tokens only", "no")  # README.md's variant table uses these words


@dataclass(frozen=True)
class Capabilities:
    """What a model with its tokenizer can do, as `capabilities()` decides it.

    infilling: "trained" (Meta trained it to infill), "tokens only" (its vocab has the infilling tokens, but it was
        not trained for infilling), "no" (it cannot infill here; `infilling_refusal` says why and what to do).
    fim_token_ids: prefix/suffix/middle/eot ids where infilling is not "no", else None.
    chat_format: "none" | "inst" | "step". context: the model's positions (None without a config).
    stop_token_ids: EOS, then EOT where the vocab has it, then `<step>` for 70b-Instruct.
    name: the variant's name, or words for the model in messages.
    """

    variant: str | None
    name: str
    infilling: str
    fim_token_ids: dict[str, int] | None
    chat_format: str
    context: int | None
    stop_token_ids: tuple[int, ...]
    infilling_refusal: str | None = None
    tokenizer_fits: bool = True  # False: the tokenizer's infilling ids are not the model's (infilling is "no")


def capabilities(config=None, tokenizer=None) -> Capabilities:
    """Capabilities of a model config (a CodeLlamaConfig, or a stock Llama config, identified) with its tokenizer.

    Either may be None: the training transform has only a tokenizer, the docs only a preset's config. A config
    that fits no variant (or none at all) says nothing about infilling: the tokenizer's infilling pieces decide
    there. Where both are given, infilling ids that disagree (or lie past the model's vocab) mean "no".
    """
    if config is None and tokenizer is None:
        raise UserInputError("capabilities() needs a model config, a tokenizer or both")
    facts = code_llama_facts(config) if config is not None else None
    pieces = None
    if tokenizer is not None:
        control = getattr(tokenizer, "control_token_ids", None)
        if control is None:
            raise UserInputError(f"{type(tokenizer).__name__!r} is not codellama_hf's CodeLlamaTokenizer; load the "
                                 f"tokenizer with AutoTokenizer after `import codellama_hf`")
        pieces = {k: control.get(k) for k in FIM_IDS_32016}
    if facts is not None:
        name = facts.variant or f"this model (vocab {facts.vocab_size})"
    else:
        size = getattr(tokenizer, "vocab_size", None)
        name = f"the tokenizer {getattr(tokenizer, 'name_or_path', '') or ''!r}" + (f" ({size} pieces)" if size else "")
    trained = facts.infilling if facts is not None else None
    complete = pieces is not None and None not in pieces.values()
    if trained is None and complete:
        fim, trained = pieces, True
    else:
        fim = facts.fim_token_ids if facts is not None else None
    refusal, fits = None, True
    if fim is None:
        refusal = (f"{name} has no infilling tokens, so it cannot infill; the variants trained for infilling are: "
                   f"{', '.join(INFILLING_VARIANTS)}")
    elif pieces is not None and facts is not None and (pieces != fim or max(fim.values()) >= facts.vocab_size):
        fits = False
        refusal = (f"the tokenizer's infilling ids {pieces} do not fit the model's ({fim}, vocab {facts.vocab_size}); "
                   f"load the tokenizer from the model's folder")
    infilling = "no" if refusal else "trained" if trained else "tokens only"
    if facts is not None and facts.chat_format is not None:
        chat_format = facts.chat_format
    else:
        chat_format = getattr(tokenizer, "chat_format", None) or "none"
    # The config's own stop ids (its generation config's), and EOT wherever the tokenizer has the piece: a
    # continuation that reaches it has left the code, whether or not the model was trained to write it.
    stops = list(facts.stop_token_ids) if facts is not None else [tokenizer.eos_token_id]
    stops[1:1] = [pieces["eot_token_id"]] if pieces is not None else []
    return Capabilities(
        variant=facts.variant if facts is not None else None, name=name, infilling=infilling,
        fim_token_ids=None if refusal else dict(fim), chat_format=chat_format,
        context=int(facts.max_position_embeddings) if facts is not None else None,
        stop_token_ids=tuple(dict.fromkeys(i for i in stops if i is not None)), infilling_refusal=refusal,
        tokenizer_fits=fits)
