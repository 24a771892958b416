"""Meta's fill-in-the-middle (FIM) training transformation, for `datasets.map`, and a data collator for `Trainer`.

What the Code Llama paper (Rozière et al., "Code Llama: Open Foundation Models for Code", arXiv:2308.12950, §2.3
Infilling) says, and where it is done here:
- documents are split at the character level into prefix, middle and suffix, at two locations drawn independently
  and uniformly over the document length (`split_document`);
- the transformation applies with probability 0.9, and only to documents not cut across model contexts (`fim_rate`,
  `max_length`: a document whose plain or FIM ids exceed one context stays plain text, cut into contexts);
- half of the splits are formatted prefix-suffix-middle (PSM) and half suffix-prefix-middle (SPM, the "compatible"
  variant of Bavarian et al. 2022, App. D) (`spm_rate`);
- the implicit leading space SentencePiece adds is suppressed when encoding the middle and the suffix (Meta's
  `encode_infilling`, `"☺" + text` less its first two pieces);
- in SPM, prefix and middle are concatenated before encoding, so training never sees a token split at their
  boundary (the paper notes PSM does see such splits);
- `<EOT>` ends the infilling span.

So the ids are, with `tok` Meta's tokenizer.py (`encode` carries the dummy prefix, no BOS/EOS):
  PSM: [BOS, PRE] + encode(prefix) + [SUF] + encode_infilling(suffix) + [MID] + encode_infilling(middle) + [EOT]
  SPM: [BOS, PRE, SUF] + encode_infilling(suffix) + [MID] + encode(prefix + middle) + [EOT]
  not transformed: [BOS] + encode(document) + [EOS]
The PSM ids before the middle are exactly Meta's inference prompt (`infilling_prompt_ids(prefix, suffix)`), and the
rest decodes back to the middle with `decode_infilling`. SPM's inference prompt is `[BOS, PRE, SUF] +
encode_infilling(suffix) + [MID] + encode(prefix)`: the training ids equal it up to `<MID>`; after it,
encode(prefix + middle) starts with encode(prefix) unless a token spans the split (or BPE merges differently just
before it), and then they agree only up to where they part; decoded, they always give prefix + middle. Where they
agree in full, the rest decodes back to the middle with `decode_infilling` too, except after an empty prefix,
where those ids carry encode's dummy prefix and `decode` gives the middle (a corner of Meta's SPM format).
`prompt_length` is how many leading ids the inference prompt gives in either case; labels="middle" puts the loss
on the rest: the middle and `<EOT>`, and in SPM the ids from where the encodings part.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from ..configuration import capabilities
from ..errors import UserInputError
from ..variants import FIM_IDS_32016, INFILLING_VARIANTS

LABELS = ("all", "middle")
IGNORE = -100  # Transformers' loss ignores this label


def split_document(text: str, rng: random.Random) -> tuple[str, str, str]:
    """(prefix, middle, suffix) at two character positions drawn independently and uniformly from 0..len(text)."""
    i, j = sorted(rng.randint(0, len(text)) for _ in range(2))
    return text[:i], text[i:j], text[j:]


def fim_sequence(tokenizer, prefix: str, middle: str, suffix: str, *, spm: bool) -> tuple[list[int], int]:
    """(input_ids, prompt_length): Meta's FIM training ids for one split, ending in `<EOT>`, and how many of their
    leading ids the inference prompt `infilling_prompt_ids(prefix, suffix, suffix_first=spm)` gives."""
    pre, suf, mid, eot = _fim_ids(tokenizer)
    bos = tokenizer.bos_token_id
    # encode_text is Meta's `encode`: documents are text, never fill markers or rendered chats.
    text = lambda s: tokenizer.encode_text(s, add_special_tokens=False)  # noqa: E731
    if spm:
        prefix_ids, joined = text(prefix), text(prefix + middle)
        head = [bos, pre, suf] + tokenizer.encode_infilling(suffix) + [mid]
        agree = next((k for k, (a, b) in enumerate(zip(prefix_ids, joined)) if a != b),
                     min(len(prefix_ids), len(joined)))
        return head + joined + [eot], len(head) + agree
    prompt = [bos, pre] + text(prefix) + [suf] + tokenizer.encode_infilling(suffix) + [mid]
    return prompt + tokenizer.encode_infilling(middle) + [eot], len(prompt)


class FIMTransform:
    """Meta's FIM transformation for `datasets.map`: documents in, `input_ids` and `labels` out.

    Use `dataset.map(FIMTransform(tok, max_length=4096), batched=True, with_indices=True,
    remove_columns=dataset.column_names)`; batched, a document longer than one context becomes several rows.

    Args:
        tokenizer: codellama_hf's CodeLlamaTokenizer with the infilling pieces (`capabilities(None, tokenizer)`
            says whether it has them).
        fim_rate: probability that a document is transformed (the paper's 0.9).
        spm_rate: probability that a transformed document is SPM rather than PSM (the paper's half).
        max_length: the training context; a document whose ids do not fit is left plain and cut into contexts.
            None: no limit.
        labels: "all" (loss on every id, as in pre-training) or "middle" (no loss on the ids the inference prompt
            gives, so on the middle and `<EOT>`; plain documents keep the loss on every id).
        seed: with the row index (with_indices=True) or else the text, it decides each document's draws, so the
            same seed gives the same rows whatever the batch size or number of processes.
        text_column: the column holding the documents.
    """

    def __init__(self, tokenizer, *, fim_rate: float = 0.9, spm_rate: float = 0.5, max_length: int | None = None,
                 labels: str = "all", seed: int = 0, text_column: str = "text"):
        for name, rate in (("fim_rate", fim_rate), ("spm_rate", spm_rate)):
            if not 0 <= rate <= 1:
                raise UserInputError(f"{name}={rate!r} is not a probability; pass a number from 0 to 1")
        if labels not in LABELS:
            raise UserInputError(f"labels={labels!r} is not one of {LABELS}; pass 'all' or 'middle'")
        if max_length is not None and max_length < 8:
            raise UserInputError(f"max_length={max_length!r} is too short for a FIM sequence; pass the training "
                                 "context length (e.g. 4096)")
        if fim_rate > 0:
            _fim_ids(tokenizer)
        self.tokenizer, self.fim_rate, self.spm_rate = tokenizer, fim_rate, spm_rate
        self.max_length, self.labels, self.seed, self.text_column = max_length, labels, seed, text_column

    def __call__(self, batch: dict, indices: int | Sequence[int] | None = None) -> dict[str, list]:
        if self.text_column not in batch:  # datasets passes a mapping of its own, not a dict
            raise UserInputError(f"no column {self.text_column!r} in the rows ({', '.join(map(repr, batch))}); "
                                 "pass text_column= naming the column that holds the documents")
        texts = batch[self.text_column]
        if isinstance(texts, str):  # map without batched=True: one row in, one row out
            rows = self.rows(texts, key=indices)
            if len(rows) > 1:
                raise UserInputError(f"a document of {len(texts)} characters exceeds max_length={self.max_length}; "
                                     "map with batched=True so that it can be cut into several rows")
            return {"input_ids": rows[0][0], "labels": rows[0][1]}
        keys = list(indices) if indices is not None else [None] * len(texts)
        out = {"input_ids": [], "labels": []}
        for text, key in zip(texts, keys):
            for ids, labels in self.rows(text, key=key):
                out["input_ids"].append(ids)
                out["labels"].append(labels)
        return out

    def rows(self, text: str, *, key=None) -> list[tuple[list[int], list[int]]]:
        """(input_ids, labels) rows for one document: one FIM row, or the plain document cut into contexts."""
        if not isinstance(text, str):
            raise UserInputError(f"document {text!r} is not text; the {self.text_column!r} column must hold strings")
        tok = self.tokenizer
        if key is None:
            key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        rng = random.Random(f"{self.seed}:{key}")  # str seeds hash with SHA-512: the same in every process
        plain = [tok.bos_token_id] + tok.encode_text(text, add_special_tokens=False) + [tok.eos_token_id]
        fits = self.max_length is None or len(plain) <= self.max_length
        if fits and rng.random() < self.fim_rate:
            prefix, middle, suffix = split_document(text, rng)
            ids, prompt = fim_sequence(tok, prefix, middle, suffix, spm=rng.random() < self.spm_rate)
            if self.max_length is None or len(ids) <= self.max_length:
                labels = [IGNORE] * prompt + ids[prompt:] if self.labels == "middle" else list(ids)
                return [(ids, labels)]
        step = self.max_length or len(plain)
        return [(plain[i:i + step], plain[i:i + step]) for i in range(0, len(plain), step)]


def fim_data_collator(tokenizer, *, pad_to_multiple_of: int | None = None):
    """A `Trainer` data collator for FIMTransform rows: pads `input_ids` with the pad id and `labels` with -100
    (padding never carries loss), and adds the attention mask. Transformers' DataCollatorForSeq2Seq does exactly
    that for decoder-only rows too."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE,
                                  pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")


def _fim_ids(tokenizer) -> tuple[int, int, int, int]:
    if not hasattr(tokenizer, "encode_text"):
        raise UserInputError(f"FIM training data needs codellama_hf's CodeLlamaTokenizer, got "
                             f"{type(tokenizer).__name__!r}; load it with AutoTokenizer after `import codellama_hf`")
    caps = capabilities(None, tokenizer)
    if caps.fim_token_ids is None:
        raise UserInputError(f"the tokenizer {tokenizer.name_or_path or ''!r} has no infilling pieces (<PRE>, <SUF>, "
                             f"<MID>, <EOT>), so it cannot make FIM data; use the tokenizer of a variant trained for "
                             f"infilling ({', '.join(INFILLING_VARIANTS)}), or fim_rate=0")
    return tuple(caps.fim_token_ids[k] for k in FIM_IDS_32016)
