"""`UserInputError`: `codellama_hf_core.errors`, where it lives torch-free, so the CLI catches it without torch."""

from codellama_hf_core.errors import UserInputError  # noqa: F401
