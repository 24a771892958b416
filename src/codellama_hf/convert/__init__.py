"""Meta's Code Llama checkpoints (consolidated.NN.pth) to Hugging Face safetensors folders, streamed."""

from .converter import convert_meta_checkpoint

__all__ = ["convert_meta_checkpoint"]
