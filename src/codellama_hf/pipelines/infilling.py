"""`pipeline("code-infilling")`: code with a gap in, the completed code out.

Orchestration only: the prompt ids come from CodeLlamaTokenizer (Meta's `infilling_prompt_tokens`), the middle is
decoded by its `decode_infilling`, whether the model infills and its stop ids come from `capabilities()`, and
decoding on CUDA takes the fast path (`codellama_hf.fast_path`).
"""

from __future__ import annotations

import warnings

import torch
from transformers import GenerationConfig, Pipeline, TextStreamer

from ..configuration import capabilities
from ..errors import UserInputError
from ..fast_path import FastPathPipeline
from ..tokenization.infilling import split_at_marker
from ..variants import INFILLING_VARIANTS

TASK = "code-infilling"
DEFAULT_BATCH_SIZE = 8  # a list runs in batches unless the caller picks batch_size


class CodeInfillingPipeline(FastPathPipeline, Pipeline):
    """Fill the gap in code with Code Llama, as Meta's `example_infilling.py` does (greedy, 128 new tokens).

    Inputs: a string with exactly one fill marker (`<FILL_ME>`, the tokenizer's `fill_marker`), a dict
    `{"prefix": ..., "suffix": ...}`, or a list of either (run `batch_size` at a time, default 8, left-padded, one
    `generate` call per batch).

    Parameters: `suffix_first=True` for Meta's SPM prompt; `max_prompt_tokens=N` trims a longer prompt around the
    gap (see `CodeLlamaTokenizer.infilling_prompt_ids`); `return_full_text=False` puts only the middle in
    `generated_text`; any `generate` keyword (`max_new_tokens`, `do_sample`, `streamer`, ...). A `TextStreamer`
    passed as `streamer` is set to skip the prompt and to decode as `decode_infilling`, so it streams the middle.

    Returns, per input: `{"infill": middle, "generated_text": prefix + middle + suffix}`. Generation stops at EOT or
    EOS, and neither is in the text.

    Fast path (docs/pipelines.md#fast-path): on by default on CUDA, `fast=False` (at construction or per call) opts
    out, `fast=True` asks for it elsewhere; `warmup=True` at construction compiles before the first request.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=128, do_sample=False)

    def __init__(self, *args, warmup=False, **kwargs):
        super().__init__(*args, **kwargs)
        if self._batch_size is None:
            self._batch_size = DEFAULT_BATCH_SIZE
        caps = capabilities(self.model.config, self.tokenizer)
        if caps.infilling == "no":
            raise UserInputError(caps.infilling_refusal)
        if caps.infilling == "tokens only":
            warnings.warn(f"{caps.name} has infilling tokens but was not trained for infilling, so expect poor "
                          f"middles; the variants trained for it are: {', '.join(INFILLING_VARIANTS)}", stacklevel=2)
        self._stop_ids = list(caps.stop_token_ids)
        self._warm_up_if_asked(warmup, kwargs.get("fast"))

    def _sanitize_parameters(self, suffix_first=None, max_prompt_tokens=None, return_full_text=None, fast=None,
                             **generate_kwargs):
        preprocess = {k: v for k, v in {"suffix_first": suffix_first, "max_prompt_tokens": max_prompt_tokens}.items()
                      if v is not None}
        postprocess = {} if return_full_text is None else {"return_full_text": return_full_text}
        if isinstance(streamer := generate_kwargs.get("streamer"), TextStreamer):
            streamer.skip_prompt = True
            streamer.decode_kwargs = {**streamer.decode_kwargs, "skip_special_tokens": True, "infilling": True}
        if fast is not None:
            generate_kwargs["fast"] = fast
        # as TextGenerationPipeline does: an assistant passed at construction assists every call
        if getattr(self, "assistant_model", None) is not None:
            generate_kwargs.setdefault("assistant_model", self.assistant_model)
        if getattr(self, "assistant_tokenizer", None) is not None:
            generate_kwargs.setdefault("tokenizer", self.tokenizer)
            generate_kwargs.setdefault("assistant_tokenizer", self.assistant_tokenizer)
        return preprocess, generate_kwargs, postprocess

    def preprocess(self, inputs, suffix_first: bool = False, max_prompt_tokens: int | None = None):
        prefix, suffix = split_gap(inputs, marker=self.tokenizer.fill_marker)
        ids = self.tokenizer.infilling_prompt_ids(prefix, suffix, suffix_first=suffix_first,
                                                  max_length=max_prompt_tokens)
        input_ids = torch.tensor([ids])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "prefix": prefix,
                "suffix": suffix}

    def _forward(self, model_inputs, **generate_kwargs):
        prefix, suffix = model_inputs.pop("prefix"), model_inputs.pop("suffix")
        asked = generate_kwargs.get("eos_token_id")
        asked = [] if asked is None else [asked] if isinstance(asked, int) else list(asked)
        stops = self._stop_ids + [i for i in asked if i not in self._stop_ids]
        output = self.model.generate(**model_inputs, **self._prepare_generate_kwargs(generate_kwargs,
                                                                                        eos_token_id=stops))
        if not isinstance(output, torch.Tensor):
            output = output.sequences
        return {"middle_ids": output[:, model_inputs["input_ids"].shape[1]:], "prefix": prefix, "suffix": suffix}

    def postprocess(self, model_outputs, return_full_text: bool = True):
        middle = self.tokenizer.decode_infilling(model_outputs["middle_ids"][0].tolist())
        prefix, suffix = model_outputs["prefix"], model_outputs["suffix"]
        return {"infill": middle, "generated_text": prefix + middle + suffix if return_full_text else middle}


def split_gap(inputs, *, marker: str | None) -> tuple[str, str]:
    """(prefix, suffix) of one input: a string with exactly one marker, or a {"prefix", "suffix"} dict."""
    if isinstance(inputs, dict):
        if set(inputs) != {"prefix", "suffix"} or not all(isinstance(v, str) for v in inputs.values()):
            raise UserInputError(f"an infilling dict needs exactly the string keys 'prefix' and 'suffix', got keys "
                                 f"{sorted(inputs)!r}")
        return inputs["prefix"], inputs["suffix"]
    if not isinstance(inputs, str):
        raise UserInputError(f"code-infilling takes a string with {marker!r}, a {{'prefix', 'suffix'}} dict or a "
                             f"list of them, got {type(inputs).__name__}")
    prefix, suffix = split_at_marker(inputs, marker=marker)
    if suffix is None:
        raise UserInputError(f"the code holds no fill marker {marker!r}; put exactly one where the middle goes, or "
                             f"pass {{'prefix': ..., 'suffix': ...}}")
    return prefix, suffix
