"""The 12 released Code Llama variants, one row each.

Sources, cited per row by tag:
  [paper]  Rozière et al., "Code Llama: Open Foundation Models for Code", arXiv:2308.12950 (Aug 2023):
           7B/13B/34B shapes (they are Llama 2's), 16k context with rope theta 1e6 (sec. 2.4),
           infilling trained for 7B and 13B base and Instruct only, not for Python or 34B (sec. 2.3).
  [params] params.json in Meta's download (facebookresearch/codellama download.sh layout).
  [hub]    config.json of codellama/<name>-hf on the Hugging Face hub.
  [2024]   Meta's Jan 2024 70B release (facebookresearch/codellama README and MODEL_CARD):
           70B base trained for infilling; 70B-Instruct chats with `Source:`/`<step>` turns.

A public source disagrees on one value: the hub's CodeLlama-70b-hf config says rope theta 1e6 and
16384 positions while 70b-Python/Instruct say 1e4 and 4096 (hub discussion
codellama/CodeLlama-70b-hf#7 asks whether the base config is right). We keep the hub values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError

# Infilling control ids in the 32016-piece vocab, by the pieces ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>.
FIM_IDS_32016 = {"prefix_token_id": 32007, "suffix_token_id": 32008, "middle_token_id": 32009, "eot_token_id": 32010}
STEP_ID_70B_INSTRUCT = 32015  # `<step>`, 70b-Instruct's turn marker, replaces the last ▁<EOT>x6 piece

FLAVORS = ("base", "python", "instruct")
CHAT_FORMATS = ("none", "inst", "step")  # no chat, [INST] turns, 70b-Instruct's Source:/<step> turns


@dataclass(frozen=True)
class Variant:
    name: str
    flavor: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    max_position_embeddings: int
    infilling: bool
    chat_format: str

    @property
    def hub_id(self) -> str:
        return f"codellama/{self.name}-hf"


V = Variant
# fmt: off
# name                      flavor      hidden layers heads kv  inter. vocab  theta  max_pos infill chat
PRESETS: tuple[Variant, ...] = (
    V("CodeLlama-7b",           "base",     4096, 32, 32, 32, 11008, 32016, 1e6, 16384, True,  "none"),  # [paper][params][hub]
    V("CodeLlama-7b-Python",    "python",   4096, 32, 32, 32, 11008, 32000, 1e6, 16384, False, "none"),  # [paper][params][hub]
    V("CodeLlama-7b-Instruct",  "instruct", 4096, 32, 32, 32, 11008, 32016, 1e6, 16384, True,  "inst"),  # [paper][params][hub]
    V("CodeLlama-13b",          "base",     5120, 40, 40, 40, 13824, 32016, 1e6, 16384, True,  "none"),  # [paper][params][hub]
    V("CodeLlama-13b-Python",   "python",   5120, 40, 40, 40, 13824, 32000, 1e6, 16384, False, "none"),  # [paper][params][hub]
    V("CodeLlama-13b-Instruct", "instruct", 5120, 40, 40, 40, 13824, 32016, 1e6, 16384, True,  "inst"),  # [paper][params][hub]
    V("CodeLlama-34b",          "base",     8192, 48, 64,  8, 22016, 32000, 1e6, 16384, False, "none"),  # [paper][params][hub]
    V("CodeLlama-34b-Python",   "python",   8192, 48, 64,  8, 22016, 32000, 1e6, 16384, False, "none"),  # [paper][params][hub]
    V("CodeLlama-34b-Instruct", "instruct", 8192, 48, 64,  8, 22016, 32000, 1e6, 16384, False, "inst"),  # [paper][params][hub]
    V("CodeLlama-70b",          "base",     8192, 80, 64,  8, 28672, 32016, 1e6, 16384, True,  "none"),  # [2024][hub]
    V("CodeLlama-70b-Python",   "python",   8192, 80, 64,  8, 28672, 32016, 1e4,  4096, False, "none"),  # [2024][hub]
    V("CodeLlama-70b-Instruct", "instruct", 8192, 80, 64,  8, 28672, 32016, 1e4,  4096, False, "step"),  # [2024][hub]
)
# fmt: on
del V

VARIANTS: tuple[str, ...] = tuple(v.name for v in PRESETS)
# Views that error messages name: the variants trained for infilling, and those that chat.
INFILLING_VARIANTS: tuple[str, ...] = tuple(v.name for v in PRESETS if v.infilling)
INSTRUCT_VARIANTS: tuple[str, ...] = tuple(v.name for v in PRESETS if v.chat_format != "none")

# Exact names only (no substring guessing): Meta's folder name and the hub id.
_BY_NAME = {key: v for v in PRESETS for key in (v.name, v.hub_id)}


def get_variant(name: str) -> Variant:
    """The preset for Meta's folder name (`CodeLlama-7b-Python`) or hub id (`codellama/CodeLlama-7b-Python-hf`).
    An unknown name raises UserInputError (a ValueError)."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise UserInputError(f"unknown Code Llama variant {name!r}; expected one of: {', '.join(VARIANTS)} "
                             f"(or their hub ids, e.g. {PRESETS[0].hub_id!r})") from None


def resolve_variant(folder=None, *, variant: str | None = None) -> Variant:
    """The one resolver for a checkpoint's variant: `variant` (a name or hub id, e.g. from --variant), else the
    folder's own name, as Meta names its download folders (`CodeLlama-7b-Python`). Raises UserInputError naming
    the fix."""
    if variant:
        try:
            return get_variant(variant)
        except UserInputError as e:
            raise UserInputError(f"{e}; fix --variant") from None
    name = Path(folder).resolve().name if folder is not None else None
    if name in _BY_NAME:
        return _BY_NAME[name]
    raise UserInputError(f"the folder name {name!r} is not a variant name, as Meta names its folders; pass "
                         f"--variant NAME, one of: {', '.join(VARIANTS)}")


def variant_in_name(name: str) -> Variant | None:
    """The variant a hub id or a folder is named after, exactly (`codellama/CodeLlama-7b-Instruct-hf`,
    `.../CodeLlama-7b-Instruct`, `.../CodeLlama-7b-Instruct-hf`), else None."""
    base = str(name).rstrip("/").rsplit("/", 1)[-1]
    for key in (str(name), base, base.removesuffix("-hf")):
        if key in _BY_NAME:
            return _BY_NAME[key]
    return None
