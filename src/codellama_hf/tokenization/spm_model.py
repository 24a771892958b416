"""SentencePiece `tokenizer.model` -> a `tokenizers.Tokenizer` with SentencePiece's exact BPE semantics.

Reading the file needs neither sentencepiece nor protobuf: a ModelProto is a handful of protobuf fields, decoded
here from the wire format (field numbers from sentencepiece_model.proto).

Why the backend is built the way it is (each choice measured against `SentencePieceProcessor`):
- SentencePiece BPE merges the adjacent pair whose *result* has the highest piece score, so the merge list is
  every split of every piece, ranked by that piece's score (not by id).
- Its dummy prefix and whitespace escaping are normalization of the whole input, not a pre-tokenizer, so the
  normalizer is Prepend("▁") then Replace(" ", "▁") and there is no pre-tokenizer: indentation stays exact.
- Decoding drops the one leading space the dummy prefix added, and byte pieces fall back to raw bytes.
- Control pieces (the infilling and turn markers) get no merges, so plain text can never produce them.
- Where no piece holds "▁" after another character (true of Llama's vocab), no merge can cross the start of a
  "▁" run, so the text is cut there into words: the same ids, but BPE works per word and caches repeated words.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from ..errors import UserInputError

# SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, UNUSED = 1, 2, 3, 4, 6, 5
SPM_BPE = 2  # TrainerSpec.ModelType
SPACE = "▁"  # U+2581, SentencePiece's escaped space
WORD = f"{SPACE}*[^{SPACE}]+|{SPACE}+"  # a run of escaped spaces and the text up to the next run
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
# SentencePiece decodes an invalid UTF-8 byte run one byte at a time: U+FFFD per bad byte, then resynchronizes.
codecs.register_error("codellama_hf_spm", lambda err: ("\ufffd", err.start + 1))


@dataclass
class SpmModel:
    """The parts of a SentencePiece ModelProto that tokenization depends on."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (piece, score, type), index = id
    model_type: int = 1  # UNIGRAM unless the file says otherwise
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    treat_whitespace_as_suffix: bool = False


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, value) pairs of one protobuf message; length-delimited values stay bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def read_spm_model(path: str | Path) -> SpmModel:
    """Parse a SentencePiece `tokenizer.model`."""
    data = Path(path).read_bytes()
    model = SpmModel()
    try:
        for number, value in _fields(data):
            if number == 1:  # pieces
                piece, score, kind = "", 0.0, NORMAL
                for n, v in _fields(value):
                    if n == 1:
                        piece = v.decode("utf-8")
                    elif n == 2:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3:
                        kind = v
                model.pieces.append((piece, score, kind))
            elif number == 2:  # trainer_spec
                for n, v in _fields(value):
                    if n == 3:
                        model.model_type = v
                    elif n == 24:
                        model.treat_whitespace_as_suffix = bool(v)
                    elif n == 35:
                        model.byte_fallback = bool(v)
                    elif n in (40, 41, 42):
                        setattr(model, {40: "unk_id", 41: "bos_id", 42: "eos_id"}[n], _signed(v))
            elif number == 3:  # normalizer_spec
                for n, v in _fields(value):
                    if n == 1:
                        model.normalizer_name = v.decode("utf-8")
                    elif n == 2:
                        model.precompiled_charsmap = v
                    elif n in (3, 4, 5):
                        setattr(model, {3: "add_dummy_prefix", 4: "remove_extra_whitespaces",
                                        5: "escape_whitespaces"}[n], bool(v))
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as err:
        raise UserInputError(f"{str(path)!r} is not a SentencePiece model file ({err}); pass Meta's "
                             f"tokenizer.model") from None
    _check_llama_family(model, path)
    return model


def _check_llama_family(model: SpmModel, path) -> None:
    """Only what Llama's tokenizer uses is implemented; refuse anything else rather than tokenize it wrongly."""
    problems = []
    if not model.pieces:
        problems.append("it holds no pieces")
    if model.model_type != SPM_BPE:
        problems.append(f"model_type is {model.model_type}, not BPE ({SPM_BPE})")
    if model.precompiled_charsmap or model.normalizer_name not in ("identity", ""):
        problems.append(f"it normalizes text ({model.normalizer_name!r})")
    if model.remove_extra_whitespaces:
        problems.append("it collapses whitespace")
    if not model.escape_whitespaces or model.treat_whitespace_as_suffix:
        problems.append("its whitespace handling differs from Llama's")
    if not model.byte_fallback:
        problems.append("it has no byte fallback")
    if any(kind == UNUSED for _, _, kind in model.pieces):
        problems.append("it has UNUSED pieces (resegmentation is not implemented)")
    if problems:
        raise UserInputError(f"{str(path)!r} is not a Llama-family SentencePiece BPE model: {'; '.join(problems)}")


def spm_merges(model: SpmModel, *, unreachable: set[str]) -> list[tuple[str, str]]:
    """Every (left, right) split of every mergeable piece, ranked as SentencePiece ranks merges: by score.

    `unreachable` pieces (control pieces) get no merge, and nothing is built from them.
    """
    mergeable = {p: score for p, score, kind in model.pieces if kind == NORMAL and p not in unreachable}
    ranked = []
    for piece_id, (piece, score, _) in enumerate(model.pieces):
        if piece not in mergeable or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                # Equal scores: SentencePiece merges the leftmost pair first; the rank by id is a stable tie-break.
                ranked.append((-score, piece_id, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def normalizer_for(*, add_dummy_prefix: bool) -> normalizers.Normalizer:
    replace = normalizers.Replace(" ", SPACE)
    return normalizers.Sequence([normalizers.Prepend(SPACE), replace]) if add_dummy_prefix else replace


def decoder(*, dummy_prefix: bool) -> decoders.Decoder:
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    return decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * dummy_prefix)


def word_split_is_exact(model: SpmModel) -> bool:
    """True when no mergeable piece holds "▁" right after another character: merges never cross a word start."""
    return not any(SPACE in piece.lstrip(SPACE) for piece, _, kind in model.pieces if kind == NORMAL)


def word_splitter() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(WORD), "isolated")


def build_backend(model: SpmModel, *, unreachable: set[str]) -> Tokenizer:
    """A `tokenizers.Tokenizer` that encodes and decodes exactly as SentencePiece does (post-processor not set)."""
    vocab = {piece: i for i, (piece, _, _) in enumerate(model.pieces)}
    unk = model.pieces[model.unk_id][0]
    backend = Tokenizer(BPE(vocab=vocab, merges=spm_merges(model, unreachable=unreachable), unk_token=unk,
                            fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizer_for(add_dummy_prefix=model.add_dummy_prefix)
    if word_split_is_exact(model):
        backend.pre_tokenizer = word_splitter()
    backend.decoder = decoder(dummy_prefix=model.add_dummy_prefix)
    # SentencePiece cuts other user-defined pieces out of the escaped text before BPE; a normalized added token
    # is matched at that same stage.
    user_defined = [p for p, _, kind in model.pieces if kind == USER_DEFINED and p not in unreachable]
    backend.add_tokens([AddedToken(p, normalized=True, special=False) for p in user_defined])
    return backend


def load_backend(*, vocab_file: str | None, tokenizer_file: str | None, unreachable: set[str]) -> Tokenizer:
    """The SentencePiece-exact backend, from tokenizer.model (the source of truth) or a compatible tokenizer.json."""
    if vocab_file and os.path.isfile(vocab_file):
        backend = build_backend(read_spm_model(vocab_file), unreachable=unreachable)
        if tokenizer_file and os.path.isfile(tokenizer_file):  # keep its BOS/EOS choice (the post-processor)
            with open(tokenizer_file, encoding="utf-8") as f:
                post = json.load(f).get("post_processor")
            shell = {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}, "post_processor": post}
            backend.post_processor = Tokenizer.from_str(json.dumps(shell)).post_processor
        return backend
    if tokenizer_file and os.path.isfile(tokenizer_file):
        return _backend_from_json(tokenizer_file, unreachable=unreachable)
    raise UserInputError(f"no tokenizer found (tokenizer.model: {vocab_file!r}, tokenizer.json: {tokenizer_file!r}); "
                         "pass a folder holding Meta's tokenizer.model or a tokenizer saved by codellama_hf")


def _backend_from_json(path: str, *, unreachable: set[str]) -> Tokenizer:
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    model, normalizer, pre = spec.get("model") or {}, spec.get("normalizer") or {}, spec.get("pre_tokenizer")
    steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    kinds = [s.get("type") for s in steps]
    words = pre is not None and pre.get("type") == "Split" and pre.get("pattern") == {"Regex": WORD}
    if model.get("type") != "BPE" or not model.get("byte_fallback") or kinds not in (["Prepend", "Replace"],
                                                                                     ["Replace"]) \
            or not (pre is None or words):
        raise UserInputError(f"{path!r} does not encode as SentencePiece does (e.g. stock Transformers' Metaspace "
                             "pre-tokenizer); put Meta's tokenizer.model in that folder instead")
    # A merge that builds a control piece would let plain text produce it.
    model["merges"] = [m for m in model.get("merges", [])
                       if "".join(m.split(" ") if isinstance(m, str) else m) not in unreachable]
    spec["padding"] = spec["truncation"] = None
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.decoder = decoder(dummy_prefix=kinds[0] == "Prepend")
    return backend


def has_dummy_prefix(backend: Tokenizer) -> bool:
    return backend.normalizer is not None and backend.normalizer.normalize_str("a") == SPACE + "a"


def escape(text: str, *, dummy_prefix: bool) -> str:
    """SentencePiece's whitespace escaping (and dummy prefix) in Python, for `twin`, which has no normalizer."""
    escaped = text.replace(" ", SPACE)
    return SPACE + escaped if dummy_prefix and text else escaped


def twin(backend: Tokenizer, *, cache_words: int = 4096) -> Tokenizer | None:
    """The backend's model and word split alone, for escaped text: the fast path when no offsets are wanted.

    Its BPE caches only the first few thousand words it meets (indentation, keywords: code's commonest words);
    measured on 10 MB of stdlib sources, that beats both no cache and the default 10k entries, whose map
    outgrows the CPU cache (about 5.8 vs 5.0 MB/s on one core).
    None when text-matched added tokens (other user-defined pieces) need the full pipeline.
    """
    spec = json.loads(backend.to_str())
    if any(not token["special"] for token in spec.get("added_tokens", [])):
        return None
    model = spec["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    fast = Tokenizer(BPE(vocab=model["vocab"], merges=merges, unk_token=model["unk_token"], fuse_unk=True,
                         byte_fallback=True, cache_capacity=cache_words))
    fast.pre_tokenizer = backend.pre_tokenizer
    return fast


def decode_pieces(pieces: list[str], *, dummy_prefix: bool) -> str:
    """SentencePiece's decoding of pieces, for the corners where the backend's decoder differs from it."""
    parts, run = [], bytearray()
    for piece in pieces:
        if byte := _BYTE_PIECE.fullmatch(piece):
            run.append(int(byte.group(1), 16))
            continue
        parts.append(run.decode("utf-8", errors="codellama_hf_spm"))
        run.clear()
        parts.append(piece.replace(SPACE, " "))
    text = "".join(parts) + run.decode("utf-8", errors="codellama_hf_spm")
    return text[1:] if dummy_prefix and pieces and pieces[0].startswith(SPACE) else text
