"""The vLLM lane's fixtures (tests marked `vllm`, run by .ci/vllm-lane in a venv of their own) and, run as
`python -m tests.fixtures_vllm SCENARIO JSON`, the vLLM side of each test in a process of its own.

Every vLLM process gets a timeout and is stopped by its PID (its process group: vLLM's engine core and workers are
its children), binds to loopback only, and is small: tiny converted folders with head_dim 32 (vLLM's CPU attention
needs >= 32), enforce_eager (16-26 s to start instead of 40-60 s), a 1 GiB KV cache.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
       "VLLM_HOST_IP": "127.0.0.1", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
SHAPES = {"CodeLlama-7b-Instruct": {"dim": 128, "n_heads": 4},  # hidden 128 / 4 heads
          "CodeLlama-70b-Instruct": {"dim": 256, "n_heads": 8, "n_kv_heads": 8}}  # 8 kv heads over Meta's 8 shards
RESULT = "RESULT "
LLM_OPTIONS = dict(dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=8, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child in a session of its own, killed with everything it started when the test is done or time is up.

    Its output goes to a file, never a pipe: vLLM's engine core inherits the child's stdout and outlives it, so a
    pipe would not close when the child is done."""

    def __init__(self, args: list[str], *, timeout: float, env: dict | None = None, log: Path | None = None):
        import tempfile

        self.deadline = time.monotonic() + timeout
        self.log = log or Path(tempfile.mkstemp(prefix="vllm-lane-", suffix=".log")[1])
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **ENV, **(env or {})}, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> str:
        try:
            self.popen.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.popen.args[:4]} ran past its timeout:\n{self.tail()}") from None
        assert self.popen.returncode == 0, f"{self.popen.args[:4]} failed ({self.popen.returncode}):\n{self.tail()}"
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the whole group (the child, vLLM's engine core, its workers), SIGKILL to what is left."""
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + grace
            while time.monotonic() < end and self.popen.poll() is None:
                time.sleep(0.2)
        if self.popen.poll() is None:
            self.popen.wait(timeout=10)


def run_scenario(name: str, *, timeout: float = 480, env: dict | None = None, **args) -> dict:
    """Run `name` below in a fresh process; its JSON result (vLLM's processes log to the same file)."""
    proc = Proc([sys.executable, "-m", "tests.fixtures_vllm", name, json.dumps(args)], timeout=timeout, env=env)
    try:
        text = proc.wait()
    finally:
        proc.stop()
    results = [line[len(RESULT):] for line in text.splitlines() if line.startswith(RESULT)]
    assert results, f"{name} printed no result:\n{text[-4000:]}"
    return json.loads(results[-1])


@pytest.fixture(scope="session")
def vllm_folders(converted_checkpoint, make_meta_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """fp32 tiny folders: "inst" (7b-Instruct: infills, [INST] chats), "step" (70b-Instruct: Source:/<step>),
    "llama" (7b-Instruct converted with --format llama)."""
    from codellama_hf import convert_meta_checkpoint
    from tests.fixtures_convert import tokenizer_kind
    from tests.fixtures_tokenizer import TINY_SPM_VOCAB

    pytest.importorskip("vllm")
    inst, step = "CodeLlama-7b-Instruct", "CodeLlama-70b-Instruct"
    folders = {"inst": converted_checkpoint(inst, params=SHAPES[inst]),
               "step": converted_checkpoint(step, params=SHAPES[step])}
    vocab = Path(folders["inst"]) / "tokenizer.model"
    meta = make_meta_checkpoint(inst, n_layers=1, vocab=TINY_SPM_VOCAB, tokenizer_model=vocab, params=SHAPES[inst])
    assert tokenizer_kind(inst) == "fim"
    folders["llama"] = convert_meta_checkpoint(meta, tmp_path_factory.mktemp("llama") / inst, dtype="float32",
                                               format="llama", quiet=True)
    return folders


def hf_greedy(folder, prompts: list[list[int]], max_new_tokens: int, *, stop_ids=()) -> list[dict]:
    """Transformers' greedy `generate` per prompt: its ids and, per step, the margin between the two best logits
    (a random model can tie; where two kernels may then pick differently is said by the margin, not guessed)."""
    import torch
    from transformers import AutoModelForCausalLM

    import codellama_hf  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for ids in prompts:
        with torch.no_grad():
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                               return_dict_in_generate=True, eos_token_id=list(stop_ids) or None,
                               pad_token_id=0)
        new = g.sequences[0, len(ids):].tolist()
        margins = [float(s[0].topk(2).values.diff().abs()) for s in g.scores]
        out.append({"ids": new, "margins": margins})
    return out


def assert_same_greedy(got: list[int], ref: dict, *, tolerance: float = 1e-4) -> None:
    """Token for token; the one excuse for a different token is a near-tie in Transformers' own logits there."""
    for i, (a, b) in enumerate(zip(got, ref["ids"])):
        if a != b:
            assert ref["margins"][i] < tolerance, f"token {i}: vLLM {a}, Transformers {b} (margin {ref['margins'][i]})"
            return
    assert len(got) == len(ref["ids"]), (got, ref["ids"])


# ----- the vLLM side, in a process of its own ------------------------------------------------------------------
def _offline(args: dict) -> dict:
    """vLLM's offline LLM on `folder`: greedy ids for token prompts, and the prompt ids of chats (LLM.chat)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    chats = args.get("chats") or []
    llm = LLM(model=args["folder"], skip_tokenizer_init=not chats, **LLM_OPTIONS, **args.get("llm", {}))
    params = SamplingParams(temperature=0.0, max_tokens=args["max_tokens"], ignore_eos=True, detokenize=bool(chats))
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in args["prompts"]], params, use_tqdm=False)
    result = {"ids": [list(o.outputs[0].token_ids) for o in outs]}
    if chats:
        one = SamplingParams(temperature=0.0, max_tokens=1)
        result["chat_prompt_ids"] = [list(o.prompt_token_ids) for o in llm.chat(chats, one, use_tqdm=False)]
    return result


SCENARIOS = {"offline": _offline}

if __name__ == "__main__":  # vLLM's engine core spawns: this guard keeps the children from running it again
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = SCENARIOS[name](args)
    print(RESULT + json.dumps(result), flush=True)
    os._exit(0)  # leave now: vLLM's shutdown of its children can outlast the test's patience
