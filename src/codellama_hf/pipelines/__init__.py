"""Our pipelines, orchestration only: `pipeline("code-infilling")` and the text-generation subclass.

    infilling.py         CodeInfillingPipeline: code with a gap in, the completed code out
    text_generation.py   CodeLlamaTextGenerationPipeline: completion and Instruct chat, on the fast path on CUDA

`register_pipeline()` (run at `import codellama_hf`) registers the first and points "text-generation" at the second.
"""

from transformers import AutoModelForCausalLM
from transformers.pipelines import PIPELINE_REGISTRY

from .infilling import TASK, CodeInfillingPipeline, split_gap
from .text_generation import CodeLlamaTextGenerationPipeline, install_text_generation

__all__ = ["CodeInfillingPipeline", "CodeLlamaTextGenerationPipeline", "register_pipeline", "split_gap"]


def register_pipeline() -> None:
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=CodeInfillingPipeline, pt_model=AutoModelForCausalLM,
                                        type="text")
    install_text_generation()
