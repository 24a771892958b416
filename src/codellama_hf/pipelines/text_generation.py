"""`pipeline("text-generation")` with the fast path for Code Llama models: completion and Instruct chat.

Transformers' text-generation pipeline has no hook for how `generate` decodes, so `import codellama_hf` makes the task
build this subclass. It is TextGenerationPipeline unchanged for any model whose config is not a CodeLlamaConfig
(unless a call passes `fast=True`); for ours, decoding on CUDA takes the fast path, and `fast=False` opts out. For
any tokenizer with a fill marker (ours), a prompt holding it is refused, pointing to `pipeline("code-infilling")`.
"""

from __future__ import annotations

from transformers.pipelines import PIPELINE_REGISTRY, TextGenerationPipeline

from ..configuration import CodeLlamaConfig
from ..errors import UserInputError
from ..fast_path import FastPathPipeline

TASK = "text-generation"


class CodeLlamaTextGenerationPipeline(FastPathPipeline, TextGenerationPipeline):
    """TextGenerationPipeline, plus `fast=` (construction or call) and `warmup=True` (construction)."""

    def __init__(self, *args, warmup=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._warm_up_if_asked(warmup, kwargs.get("fast"))

    def _fast_default(self) -> bool:
        return isinstance(self.model.config, CodeLlamaConfig)

    def preprocess(self, prompt_text, prefix="", *args, **kwargs):
        # Differs: a fill marker in a text prompt is refused. The stock pipeline answers the prompt text plus the
        # decoded new tokens, so an infilling prompt would come back as the marker followed by the middle.
        marker = getattr(self.tokenizer, "fill_marker", None)
        if marker and isinstance(prompt_text, str) and marker in (prefix or "") + prompt_text:
            raise UserInputError(f"the prompt holds the fill marker {marker!r}: pipeline('text-generation') would "
                                 f"return the marker followed by the middle; use pipeline('code-infilling'), which "
                                 f"returns the completed code")
        return super().preprocess(prompt_text, prefix, *args, **kwargs)

    def _sanitize_parameters(self, fast=None, **kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        if fast is not None:
            forward["fast"] = fast
        return preprocess, forward, postprocess


def install_text_generation() -> None:
    """Point the task at CodeLlamaTextGenerationPipeline, keeping its models, defaults and type.

    A patch of Transformers' task table (`PIPELINE_REGISTRY.supported_tasks`, the same dict as
    `transformers.pipelines.SUPPORTED_TASKS`), kept because no public call serves: `pipeline()` has no hook for
    the class of a built-in task, and `PIPELINE_REGISTRY.register_pipeline` replaces the whole entry (so it would
    have to repeat the stock models and default) and warns on every import that the task already exists.
    tests/test_pipelines.py checks the entry's shape, so an upstream change of the table fails there first."""
    task = PIPELINE_REGISTRY.supported_tasks[TASK]
    stock = (TextGenerationPipeline, f"{TextGenerationPipeline.__module__}.{TextGenerationPipeline.__name__}")
    if task["impl"] in stock:  # Transformers names it lazily, as a string; another library's class stays
        PIPELINE_REGISTRY.supported_tasks[TASK] = {**task, "impl": CodeLlamaTextGenerationPipeline}
