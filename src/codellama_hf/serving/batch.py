"""`codellama-hf generate`: the model card's batch endpoint, a JSONL file in and a JSONL file out, on the same
engine as the server (Transformers' continuous batching), with no HTTP in between.

Each input line is one of
  {"input_string": [...], "parameters": {...}}   the model card's input_data  -> "output": [{"0": text}, ...]
  {"prefix": ..., "suffix": ...}                 infilling                    -> "output": {"infill", "generated_text"}
  {"prompt": ...}                                a plain completion           -> "output": {"generated_text"}
with an optional "parameters" object (max_new_tokens, temperature, top_p, top_k, do_sample, stop, return_full_text).
Each output line is {"line": N, "output": ...} or {"line": N, "error": "..."}, in input order. A rerun keeps the
complete lines already written (dropping a torn last line) and goes on after them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserInputError
from .protocol import ServingError
from .parameters import Parameters
from .service import Service, start_all


@dataclass
class BatchSummary:
    total: int  # input lines
    skipped: int  # already in the output (resumed)
    written: int
    errors: int
    tokens: int  # generated
    seconds: float
    nodes: dict[str, int] = field(default_factory=dict)  # with Ray: lines answered per node id


def completed_lines(output: Path) -> int:
    """How many records the output holds as lines 1..k, in order; cuts off anything after them (a torn line)."""
    if not output.exists():
        return 0
    done, keep = 0, 0
    with open(output, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except ValueError:
                break
            if not raw.endswith(b"\n") or not isinstance(record, dict) or record.get("line") != done + 1:
                break
            done += 1
            keep += len(raw)
    if keep != output.stat().st_size:
        with open(output, "r+b") as f:
            f.truncate(keep)
    return done


def _parameters(record: dict, default_max_new_tokens: int) -> Parameters:
    raw = record.get("parameters") or {}
    if not isinstance(raw, dict):
        raise ServingError("\"parameters\" must be an object")
    try:
        return Parameters(**{"max_new_tokens": default_max_new_tokens, **raw})
    except ValueError as e:  # pydantic's ValidationError
        first = e.errors()[0] if hasattr(e, "errors") else {"loc": (), "msg": str(e)}
        raise ServingError(f"parameters.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _plan(service: Service, text: str, default_max_new_tokens: int):
    """(requests, shape) for one input line; raises ServingError for a bad line."""
    try:
        record = json.loads(text)
    except ValueError as e:
        raise ServingError(f"not JSON ({e}); write one JSON object per line") from None
    if not isinstance(record, dict):
        raise ServingError("a line must be a JSON object with \"input_string\", \"prefix\"/\"suffix\" or \"prompt\"")
    if "input_data" in record and isinstance(record["input_data"], dict):  # the whole /score body
        record = {**record["input_data"], **({"parameters": record["parameters"]} if "parameters" in record else {})}
    params = _parameters(record, default_max_new_tokens)
    common = dict(max_new_tokens=params.max_new_tokens, sampling=params.sampling(), stop=params.stop,
                  param="parameters.max_new_tokens")
    if "input_string" in record:
        inputs = record["input_string"]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
            raise ServingError("\"input_string\" must be a non-empty list of strings")
        return [service.request(service.plain_ids(s), decode="continue", **common) for s in inputs], ("card", record,
                                                                                                      params)
    if "prefix" in record or "suffix" in record:
        prefix, suffix = record.get("prefix"), record.get("suffix")
        if not isinstance(prefix, str) or not isinstance(suffix, str):
            raise ServingError("an infilling line needs string \"prefix\" and \"suffix\"")
        trim = record.get("max_prompt_tokens")
        if trim is not None and (isinstance(trim, bool) or not isinstance(trim, int)):
            raise ServingError(f"\"max_prompt_tokens\" must be an integer, got {trim!r}")
        ids = service.infill_ids(prefix, suffix, max_prompt_tokens=trim)
        return [service.request(ids, decode="infill", **common)], ("infill", record, params)
    if isinstance(record.get("prompt"), str):
        return [service.request(service.plain_ids(record["prompt"]), decode="continue", **common)], ("prompt", record,
                                                                                                   params)
    raise ServingError("a line needs \"input_string\" (the model card's input_data), \"prefix\" and \"suffix\", or "
                       "\"prompt\"")


def _output(shape, dones) -> object:
    kind, record, params = shape
    if kind == "card":
        return [{str(i): (s if params.return_full_text else "") + d.text}
                for i, (s, d) in enumerate(zip(record["input_string"], dones))]
    if kind == "infill":
        middle = dones[0].text
        return {"infill": middle, "generated_text": record["prefix"] + middle + record["suffix"]}
    return {"generated_text": (record["prompt"] if params.return_full_text else "") + dones[0].text}


async def answer(service: Service, number: int, text: str, *, default_max_new_tokens: int) -> dict:
    """One input line's record, {"line", "output"} or {"line", "error"}, plus "_tokens" (generated) for the summary.

    The per-line work of both paths (this process, and each Ray replica of batch_ray.py): plan the requests, start
    them all at once, wait for every answer. A bad line is an error record, never the end of the job."""
    try:
        requests, shape = _plan(service, text, default_max_new_tokens)
        if len(requests) > service.engine.max_queue:  # could never be admitted whole: waiting would hang
            raise ServingError(f"the line holds {len(requests)} inputs and at most "
                               f"{service.engine.max_queue} run at once; split it or raise --concurrency")
        while True:
            try:
                runs = start_all(service, requests)  # all or none: a partial start would run for nobody
                break
            except ServingError as e:
                if e.kind != "overloaded":
                    raise
                await asyncio.sleep(0.05)  # the engine's queue is shared with nobody here: wait for room
        dones = [await run.result() for run in runs]
        return {"line": number, "output": _output(shape, dones), "_tokens": sum(d.completion_tokens for d in dones)}
    except ServingError as e:
        return {"line": number, "error": e.message}
    except Exception as e:
        return {"line": number, "error": f"{type(e).__name__}: {e}"}


class BatchJob:
    """The output side both paths share: checks the files, finds where to resume, and appends records strictly in
    input order (so resuming and cutting a torn last line work alike with and without Ray)."""

    def __init__(self, input_path, output_path, *, quiet: bool):
        input_path, output_path = Path(input_path), Path(output_path)
        if not input_path.is_file():
            raise UserInputError(f"no input file {str(input_path)!r}; pass a JSONL file, one request per line")
        if input_path.resolve() == output_path.resolve():
            raise UserInputError("--input and --output are the same file; write the output elsewhere")
        self.lines = input_path.read_text(encoding="utf-8").splitlines()
        self.done = completed_lines(output_path)
        if self.done > len(self.lines):
            raise UserInputError(f"{str(output_path)!r} already holds {self.done} lines but the input has "
                                 f"{len(self.lines)}; it is the output of another input: pass a new --output")
        self.output_path, self.quiet = output_path, quiet
        self.written = self.errors = self.tokens = 0
        self.next_line = self.done + 1

    @property
    def todo(self) -> list[str]:
        return self.lines[self.done:]

    def __enter__(self):
        self.start = time.perf_counter()
        self.progress = None
        if not self.quiet:
            from tqdm import tqdm

            self.progress = tqdm(total=len(self.lines), initial=self.done, unit="line", desc="generate",
                                 dynamic_ncols=True)
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        self.out = open(self.output_path, "a", encoding="utf-8")
        return self

    def write(self, record: dict) -> None:
        if record.get("line") != self.next_line:  # a bug, never a user's input: the file would no longer resume
            raise RuntimeError(f"record for line {record.get('line')} came when line {self.next_line} was due")
        self.tokens += record.pop("_tokens", 0)
        self.errors += "error" in record
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()
        self.written += 1
        self.next_line += 1
        if self.progress is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.progress.set_postfix_str(f"{self.tokens / elapsed:.1f} tokens/s", refresh=False)
            self.progress.update(1)

    def __exit__(self, *exc) -> None:
        try:
            os.fsync(self.out.fileno())
        finally:
            self.out.close()
            if self.progress is not None:
                self.progress.close()

    def summary(self, **more) -> BatchSummary:
        return BatchSummary(total=len(self.lines), skipped=self.done, written=self.written, errors=self.errors,
                            tokens=self.tokens, seconds=time.perf_counter() - self.start, **more)


async def _run(service: Service, job: BatchJob, *, default_max_new_tokens: int, concurrency: int) -> None:
    pending: dict[int, asyncio.Task] = {}
    semaphore = asyncio.Semaphore(concurrency)

    async def one(number: int, text: str) -> dict:
        async with semaphore:
            return await answer(service, number, text, default_max_new_tokens=default_max_new_tokens)

    window = 2 * concurrency  # lines in flight or finished but waiting for an earlier one; bounds memory
    first, todo = job.next_line, job.todo
    end, queued = first + len(todo), first
    while job.next_line < end:
        while queued < end and queued < job.next_line + window:
            pending[queued] = asyncio.ensure_future(one(queued, todo[queued - first]))
            queued += 1
        job.write(await pending.pop(job.next_line))


def run_batch(service: Service, input_path, output_path, *, default_max_new_tokens: int = 128,
              concurrency: int = 64, quiet: bool = False) -> BatchSummary:
    """Generate for every line of `input_path` into `output_path`, resuming after the lines already there."""
    with BatchJob(input_path, output_path, quiet=quiet) as job:
        asyncio.run(_run(service, job, default_max_new_tokens=default_max_new_tokens,
                         concurrency=max(1, concurrency)))
    return job.summary()
