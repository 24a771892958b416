#!/usr/bin/env python
"""Convert Meta's Code Llama download folder to a Hugging Face folder.

The same command as `codellama-hf convert`, with the same options, for those who look for a script
beside Transformers' convert_llama_weights_to_hf.py:

    python conversion/convert_codellama_weights.py CodeLlama-7b-Python/ CodeLlama-7b-Python-hf/ [--format llama]

See conversion/README.md.
"""

import sys
from pathlib import Path

try:
    import codellama_hf_cli
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import codellama_hf_cli

if __name__ == "__main__":
    sys.exit(codellama_hf_cli.main(["convert", *sys.argv[1:]]))
