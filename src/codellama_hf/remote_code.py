"""What makes a saved folder load in processes that never `import codellama_hf`: `auto_map` plus three tiny files.

Why: tools that load a folder in their own process (the lm-eval command line, vLLM's Transformers backend, scripts)
offer no hook to import a package first, and Transformers does not know the `codellama_hf` model type. With
`trust_remote_code=True`, Transformers follows `auto_map` in config.json / tokenizer_config.json to a module in the
folder. Ours only import the installed package, so such a tool runs this package's classes (not a copy of them,
which would go stale): `from codellama_hf import CodeLlamaConfig`. Without the package installed, Transformers says
which package is missing.

Transformers' own way (`register_for_auto_class`, which it also calls after every remote-code load) copies the
defining source files into each saved folder; our classes turn it off (configuration.py, modeling.py,
tokenization/) and write these files instead.
"""

from __future__ import annotations

import os

CONFIG_AUTO_MAP = {"AutoConfig": "configuration_codellama_hf.CodeLlamaConfig",
                   "AutoModel": "modeling_codellama_hf.CodeLlamaModel",
                   "AutoModelForCausalLM": "modeling_codellama_hf.CodeLlamaForCausalLM"}
# Transformers 5 reads [slow, fast] and takes the fast entry; there is one class.
TOKENIZER_AUTO_MAP = {"AutoTokenizer": [None, "tokenization_codellama_hf.CodeLlamaTokenizer"]}

MODEL_FILES = {"configuration_codellama_hf.py": ("CodeLlamaConfig",),
               "modeling_codellama_hf.py": ("CodeLlamaModel", "CodeLlamaForCausalLM")}
TOKENIZER_FILES = {"tokenization_codellama_hf.py": ("CodeLlamaTokenizer",)}


def module_text(names: tuple[str, ...]) -> str:
    return (f'"""codellama_hf\'s {", ".join(names)}, for tools that load this folder with trust_remote_code=True.\n\n'
            "The code is the installed codellama_hf package (pip install codellama-hf); this file only names it.\n"
            '"""\n\n'
            f"from codellama_hf import {', '.join(names)}\n\n"
            f"__all__ = {list(names)!r}\n")


def write_files(folder, files: dict[str, tuple[str, ...]]) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, names in files.items():
        path = os.path.join(str(folder), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(module_text(names))
        paths.append(path)
    return paths
