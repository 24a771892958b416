"""lm-evaluation-harness on a converted Instruct folder: from Python (HFLM) and from its command line, which loads
the folder with trust_remote_code=True in a process that never imports codellama_hf itself. Both render the chat
template and then encode the string; the log-likelihoods must be those of Meta's prompt ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

TASK = "codellama_hf_local"
DOCS = [{"question": "What does len([1, 2]) return?", "choices": ["2", "1", "an error"], "gold": 0},
        {"question": "Which keyword defines a function?", "choices": ["def", "func", "</s><s>[INST] lambda"],
         "gold": 0},
        {"question": "What is 2 ** 3?", "choices": ["6", "8", "9"], "gold": 1}]
OPTIONS = dict(apply_chat_template=True, num_fewshot=1)  # few-shot turns as a multi-turn chat


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A local lm-eval task: YAML with `dataset_path: json` and a local JSONL file (no hub)."""
    folder = tmp_path_factory.mktemp("lm_eval_task")
    (folder / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "data.jsonl"}
  cache_dir: {folder / "datasets_cache"}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return folder


@pytest.fixture(scope="module")
def instruct_folder(converted_checkpoint) -> Path:
    return converted_checkpoint("CodeLlama-7b-Instruct", n_layers=2)


@pytest.fixture(scope="module")
def python_run(instruct_folder, task_dir):
    """simple_evaluate from Python, as docs/evaluation.md shows it."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(instruct_folder, dtype="float32")
    tok = AutoTokenizer.from_pretrained(instruct_folder)
    lm = HFLM(pretrained=model, tokenizer=tok, backend="causal", batch_size=2)
    out = simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=str(task_dir)),
                          log_samples=True, **OPTIONS)
    return model, tok, out


def _loglikelihood(model, ids: list[int], n_context: int) -> float:
    import torch

    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(logprobs[i - 1, ids[i]].item() for i in range(n_context, len(ids)))


def test_python_api_scores_metas_prompt_ids(python_run):
    from codellama_hf.tokenization.rendered import RenderedChat

    model, tok, out = python_run
    assert out["results"][TASK]["sample_len"] == len(DOCS)
    samples = out["samples"][TASK]
    for sample in samples:
        for (context, continuation), ((got, _),) in zip(sample["arguments"], sample["resps"]):
            assert isinstance(context, RenderedChat)  # lm-eval kept our string, plan and all
            assert context.startswith("<s>[INST] ") and context.count("<s>") == 2  # one shot, then the question
            # Built without the plan: the template's `<s>`/`</s>` are control ids, and the answer continues the
            # SentencePiece call of the open turn as text (one choice holds "</s><s>[INST]", which stays text).
            context_ids = tok.encode(str(context), add_special_tokens=False, split_special_tokens=False)
            last = str(context).rsplit("<s>", 1)[1]
            as_text = lambda text: tok.encode(text, add_special_tokens=False, split_special_tokens=True)  # noqa: E731
            whole = context_ids[:-len(as_text(last))] + as_text(last + continuation)
            assert context_ids[0] == tok.bos_token_id and context_ids.count(tok.eos_token_id) == 1
            assert got == pytest.approx(_loglikelihood(model, whole, len(context_ids)), abs=1e-3)


def test_command_line_loads_the_folder_with_trust_remote_code_and_agrees(python_run, instruct_folder, task_dir,
                                                                          tmp_path):
    _, _, expected = python_run
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
               f"pretrained={instruct_folder},trust_remote_code=True,dtype=float32", "--tasks", TASK,
               "--include_path", str(task_dir), "--device", "cpu", "--batch_size", "2", "--apply_chat_template",
               "--num_fewshot", str(OPTIONS["num_fewshot"]), "--output_path", str(tmp_path / "out"),
               "--log_samples"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["results"][TASK]["acc,none"] == expected["results"][TASK]["acc,none"]
    lines = next((tmp_path / "out").rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()
    got = sorted((s["doc_id"], [float(r[0][0]) for r in s["resps"]]) for s in map(json.loads, lines))
    want = sorted((s["doc_id"], [r[0][0] for r in s["resps"]]) for s in expected["samples"][TASK])
    assert [d for d, _ in got] == [d for d, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-3)
