"""`pipeline("text-generation")` with the fast path for Code Llama models: completion and Instruct chat.

Transformers' text-generation pipeline has no hook for how `generate` decodes, so `import codellama_hf` makes the task
build this subclass. It is TextGenerationPipeline unchanged for any model whose config is not a CodeLlamaConfig
(unless a call passes `fast=True`); for ours, decoding on CUDA takes the fast path, and `fast=False` opts out.
"""

from __future__ import annotations

from transformers.pipelines import PIPELINE_REGISTRY, TextGenerationPipeline

from ..configuration import CodeLlamaConfig
from ..fast_path import FastPathPipeline

TASK = "text-generation"


class CodeLlamaTextGenerationPipeline(FastPathPipeline, TextGenerationPipeline):
    """TextGenerationPipeline, plus `fast=` (construction or call) and `warmup=True` (construction)."""

    def __init__(self, *args, warmup=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._warm_up_if_asked(warmup, kwargs.get("fast"))

    def _fast_default(self) -> bool:
        return isinstance(self.model.config, CodeLlamaConfig)

    def _sanitize_parameters(self, fast=None, **kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        if fast is not None:
            forward["fast"] = fast
        return preprocess, forward, postprocess


def install_text_generation() -> None:
    """Point the task at CodeLlamaTextGenerationPipeline, keeping its models, defaults and type (register_pipeline
    would do the same but warn on every import that the task exists)."""
    task = PIPELINE_REGISTRY.supported_tasks[TASK]
    stock = (TextGenerationPipeline, f"{TextGenerationPipeline.__module__}.{TextGenerationPipeline.__name__}")
    if task["impl"] in stock:  # Transformers names it lazily, as a string; another library's class stays
        PIPELINE_REGISTRY.supported_tasks[TASK] = {**task, "impl": CodeLlamaTextGenerationPipeline}
