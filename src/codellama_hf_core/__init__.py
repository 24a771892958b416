"""The torch-free core of codellama_hf: the 12 variants, the byte arithmetic of their memory, the input error.

Why a package of its own: importing anything under `codellama_hf` runs that package's `__init__`, which registers
the model with Transformers and so imports torch and Transformers (3-8 s, 11 s on a cold GPU machine). Questions
that need no model (`codellama-hf variants`, `codellama-hf estimate-memory NAME`) import this package alone and
answer in a fraction of a second. It imports nothing outside the standard library but psutil, and nothing from
`codellama_hf`: data flows from here up. `codellama_hf.variants`, `.errors` and `.memory` re-export it.
"""
