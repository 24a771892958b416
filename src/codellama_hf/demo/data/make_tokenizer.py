"""Regenerate demo/data/tokenizer.model, the demo's tiny SentencePiece vocabulary. Dev only: needs sentencepiece.

    .venv/bin/python src/codellama_hf/demo/data/make_tokenizer.py

Built as Meta's Code Llama tokenizer.model is: BPE, byte fallback (so any text encodes), digits split, no
normalization, a dummy prefix, and the infilling pieces ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT> as user-defined symbols
(Code Llama's ids 32007-32010; the package finds them by name, so their ids here do not matter). `☺` is a piece,
as in Meta's vocabulary, because Meta's encode_infilling leans on it. The corpus is written out below rather
than read from the machine, so the file depends only on this script and the sentencepiece version.
"""

from __future__ import annotations

import io
from pathlib import Path

VOCAB_SIZE = 512  # 3 specials + 4 infilling pieces + 256 bytes leave ~250 merges: enough for readable ids
CONTROL_PIECES = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
CORPUS = '''\
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

def remove_non_ascii(s: str) -> str:
    """Remove non-ASCII characters from a string."""
    result = ""
    for c in s:
        if ord(c) < 128:
            result += c
    return result

class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

import os
import sys
from pathlib import Path

for i in range(10):
    total += i * 2
print("hello world")  # a comment 0123456789
with open(path, "r", encoding="utf-8") as f:
    lines = [line.strip() for line in f if line]
sorted(pairs, key=lambda p: p[1])
try:
    value = int(text)
except ValueError:
    value = None
[INST] Write a function that sorts a list of tuples by their second item. [/INST]
<<SYS>>
Answer with code only.
<</SYS>>
Write a Python function that returns the sum of a list. The quick brown fox jumps over the lazy dog.
Provide answers in Python. Explain what the code does, then show an example.
☺ héllo wörld 你好 🎉
'''


def build(path: Path) -> Path:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines() * 10), model_writer=model, vocab_size=VOCAB_SIZE,
        model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=CONTROL_PIECES, required_chars="☺", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, num_threads=1, minloglevel=2)
    path.write_bytes(model.getvalue())
    return path


if __name__ == "__main__":
    out = build(Path(__file__).with_name("tokenizer.model"))
    print(f"wrote {out} ({out.stat().st_size} bytes)")
