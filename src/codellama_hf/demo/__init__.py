"""`codellama-hf demo`: first contact, fully offline.

It writes a tiny checkpoint in Meta's download format with CodeLlama-7b-Instruct's real structure (its head
counts, one shard, rope theta 1e6, Meta's FFN rounding) and random weights, converts it, loads it (4-bit where
bitsandbytes works, else bfloat16), and runs one infilling and one Instruct chat turn through the pipelines.
With `meta_dir` the same steps run on a real Meta download. The random weights make the text gibberish: the
demo shows the path from Meta's files to generated text, not a model's skill.
"""

from .checkpoint import CHAT, DEMO_TOKENIZER, DEMO_VARIANT, INFILL_CODE, make_demo_model, write_demo_checkpoint
from .report import DemoResult
from .runner import run_demo

__all__ = ["CHAT", "DEMO_TOKENIZER", "DEMO_VARIANT", "INFILL_CODE", "DemoResult", "make_demo_model",
           "run_demo", "write_demo_checkpoint"]
