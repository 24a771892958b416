"""Fixtures for the tokenizer tests: tiny SentencePiece BPE models the tests train, real code, and Meta's reference.

`MetaReference` is the independent truth: Meta's `llama/tokenizer.py` and `llama/generation.py` prompt
constructions (as the issue states them) on top of `sentencepiece.SentencePieceProcessor` itself.
"""

from __future__ import annotations

import io
import random
import shutil
import sysconfig
from pathlib import Path

import pytest

CONTROL_STRINGS = ("<PRE>", "<SUF>", "<MID>", "<EOT>", "<step>")  # text SentencePiece may turn into control ids
FIM_PIECES = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
TINY_SPM_VOCAB = 600  # pieces in the tiny vocabularies below
STDLIB = Path(sysconfig.get_paths()["stdlib"])

# Whitespace, tab, newline, unicode and emoji corners, each a separate SentencePiece call.
EDGE_CASES = [
    "", " ", "  ", "\t", "\n", "\r\n", " \n ", "\n\n\n", "    ", "\t\tx", "x\t", "  leading", "trailing  ",
    "def f(x):\n    return x\n", "if a:\n\tb()\n", "a  b   c    d", "tab\there", "\u00a0nbsp", "\u3000ideographic",
    "héllo wörld", "naïve café", "你好，世界", "こんにちは", "Привет", "مرحبا", "🎉", "👍🏽", "👨‍👩‍👧", "🇫🇷", "e\u0301",
    "\u200b\u200d\ufeff", "\x00nul", "☺", "☺☺ smile", "<s>", "</s>", "<unk>", "[INST]", "<<SYS>>", "<0x41>",
    "x = '''\n  \n'''", "# -*- coding: utf-8 -*-", "   \n   \n", "\\n\\t", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0010ffff",
]


def has_control_string(text: str) -> bool:
    return any(c in text for c in CONTROL_STRINGS)


def train_tiny_spm(folder: Path, *, user_defined: list[str], vocab_size: int = TINY_SPM_VOCAB,
                   words: bool = True) -> Path:
    """A Llama-style SentencePiece BPE model (identity normalization, byte fallback), trained in well under 1 s."""
    import sentencepiece as spm

    rng = random.Random(0)
    lines = []
    for path in rng.sample(sorted(STDLIB.glob("*.py")), 30):
        lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    lines += ["héllo wörld ☺ 你好 🎉 tab\there"] * 3
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, user_defined_symbols=user_defined, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=True, required_chars="☺",
        split_by_whitespace=words,
        max_sentence_length=100000, minloglevel=2, num_threads=1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return folder


@pytest.fixture(scope="session")
def tiny_vocabs(tmp_path_factory) -> dict[str, Path]:
    """Folders holding only a tokenizer.model: "fim" (infilling pieces), "step" (plus `<step>`), "plain" (none),
    "phrases" (pieces that span spaces, so the backend cannot cut text into words)."""
    root = tmp_path_factory.mktemp("tiny_spm")
    return {"fim": train_tiny_spm(root / "fim", user_defined=FIM_PIECES),
            "step": train_tiny_spm(root / "step", user_defined=FIM_PIECES + ["<step>"]),
            "plain": train_tiny_spm(root / "plain", user_defined=[]),
            "phrases": train_tiny_spm(root / "phrases", user_defined=FIM_PIECES, vocab_size=800, words=False)}


@pytest.fixture(scope="session")
def real_vocabs(shared_tokenizers) -> dict[str, Path]:
    return {name: shared_tokenizers / name for name in ("llama2", "codellama", "codellama-70b-instruct")}


def copy_vocab(folder: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "tokenizer.model", dest / "tokenizer.model")
    return dest


def stdlib_snippets(count: int, *, seed: int = 0, max_chars: int = 1500) -> list[str]:
    """Random slices of the Python standard library's sources (real code), with a fixed seed."""
    rng = random.Random(seed)
    files = sorted(STDLIB.glob("*.py"))
    out = []
    while len(out) < count:
        src = rng.choice(files).read_text(encoding="utf-8", errors="replace")
        start = rng.randrange(len(src))
        snippet = src[start:start + rng.randrange(1, max_chars)]
        if not has_control_string(snippet):
            out.append(snippet)
    return out


@pytest.fixture(scope="session")
def snippets() -> list[str]:
    return stdlib_snippets(300)


class MetaReference:
    """Meta's Code Llama tokenizer and prompt builders, on SentencePiece itself."""

    def __init__(self, model_file: Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        piece = lambda p: self.sp.piece_to_id(p) or None  # noqa: E731 - 0 is <unk>: the piece is absent
        self.prefix_id, self.suffix_id, self.middle_id, self.eot_id = (piece(p) for p in FIM_PIECES)
        self.step_id = piece("<step>")

    def encode(self, s: str, bos: bool = False, eos: bool = False) -> list[int]:
        return [self.bos_id] * bos + self.sp.encode(s) + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def encode_text(self, s: str, bos: bool = True) -> list[int]:
        """SentencePiece's ids for `s` as text: the same model with its user-defined pieces (` <PRE>`, `<step>`)
        made control pieces, which SentencePiece never matches in text (as it never matches `<s>`)."""
        if not hasattr(self, "_text_sp"):
            import sentencepiece as spm
            from sentencepiece import sentencepiece_model_pb2 as pb

            proto = pb.ModelProto()
            proto.ParseFromString(self.sp.serialized_model_proto())
            for p in proto.pieces:
                if p.type == pb.ModelProto.SentencePiece.USER_DEFINED:
                    p.type = pb.ModelProto.SentencePiece.CONTROL
            self._text_sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        return [self.bos_id] * bos + self._text_sp.encode(s)

    def encode_infilling(self, s: str) -> list[int]:
        return self.sp.encode("☺" + s)[2:]

    def decode_infilling(self, ids: list[int]) -> str:
        return self.sp.decode([self.sp.piece_to_id("☺")] + ids)[1:]

    def infilling_prompt(self, pre: str, suf: str, suffix_first: bool = False) -> list[int]:
        if suffix_first:
            return ([self.bos_id, self.prefix_id, self.suffix_id] + self.encode_infilling(suf) + [self.middle_id]
                    + self.encode(pre))
        return [self.bos_id, self.prefix_id] + self.encode(pre) + [self.suffix_id] + self.encode_infilling(suf) + [
            self.middle_id]

    def chat_inst(self, dialog: list[dict]) -> list[int]:
        if dialog[0]["role"] == "system":
            dialog = [{"role": dialog[1]["role"],
                       "content": "<<SYS>>\n" + dialog[0]["content"] + "\n<</SYS>>\n\n" + dialog[1]["content"]}
                      ] + dialog[2:]
        ids = []
        for prompt, answer in zip(dialog[::2], dialog[1::2]):
            ids += self.encode(f"[INST] {prompt['content'].strip()} [/INST] {answer['content'].strip()} ", True, True)
        return ids + self.encode(f"[INST] {dialog[-1]['content'].strip()} [/INST]", True, False)

    def chat_step(self, dialog: list[dict]) -> list[int]:
        if dialog[0]["role"] != "system":
            dialog = [{"role": "system", "content": ""}] + dialog
        ids = [self.bos_id]
        for message in dialog:
            headers = [f"Source: {message['role'].strip()}"]
            if message.get("destination") is not None:
                headers.append(f"Destination: {message['destination'].strip()}")
            ids += self.encode(" " + "\n".join(headers))
            if message["content"]:
                ids += self.encode("\n\n " + message["content"].strip())
            ids.append(self.step_id)
        return ids + self.encode(" Source: assistant\nDestination: user") + self.encode("\n\n ")


@pytest.fixture(scope="session")
def load_tokenizer():
    """(folder, **kwargs) -> (CodeLlamaTokenizer, MetaReference), cached per folder and arguments."""
    from codellama_hf import CodeLlamaTokenizer

    cache = {}

    def load(folder: Path, **kwargs):
        key = (str(folder), tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = (CodeLlamaTokenizer.from_pretrained(folder, **kwargs),
                          MetaReference(Path(folder) / "tokenizer.model"))
        return cache[key]

    return load


@pytest.fixture(scope="session")
def inst(tiny_vocabs, load_tokenizer):
    """A tiny tokenizer with the infilling pieces, chatting in Meta's [INST] turns."""
    return load_tokenizer(tiny_vocabs["fim"], chat_format="inst")


@pytest.fixture(scope="session")
def step(tiny_vocabs, load_tokenizer):
    """A tiny tokenizer with `<step>`, chatting in 70b-Instruct's Source:/<step> turns."""
    return load_tokenizer(tiny_vocabs["step"], chat_format="step")

