"""`codellama-hf generate --ray`: batch.py's JSONL job as Ray Data `map_batches` over actor replicas.

Each replica is one actor that loads the Service once, with the command's model options (engine included), and
answers a batch of lines concurrently on its engine with batch.py's `answer`. The driver iterates the dataset in input
order and appends each record as it comes through batch.py's writer, so resuming, the torn last line and error records
are exactly those of the job without Ray. Ray is imported here only, and only `--ray` imports this module.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter

from ..errors import UserInputError
from .batch import BatchSummary, BatchJob, answer
from .loading import check_folder

REPLICA_START_TIMEOUT_S = 1800  # a 70B from a network disk, with room to spare


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise UserInputError(f"{e.name} is not installed; `generate --ray` needs the ray extra: "
                             f"pip install 'codellama-hf[ray]'") from None
    return ray


class Replica:
    """One actor of the pool: a Service loaded once for its life; the lines of a batch share its engine."""

    def __init__(self, folder: str, load_options: dict, default_max_new_tokens: int, concurrency: int):
        import ray

        from .loading import load_service

        self.service = load_service(folder, **load_options)
        self.node = ray.get_runtime_context().get_node_id()
        self.default_max_new_tokens, self.concurrency = default_max_new_tokens, concurrency

    async def _answer_all(self, numbered: list[tuple[int, str]]) -> list[dict]:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(number: int, text: str) -> dict:
            async with semaphore:
                return await answer(self.service, number, text, default_max_new_tokens=self.default_max_new_tokens)

        return await asyncio.gather(*(one(n, t) for n, t in numbered))

    def __del__(self):
        # Ray Data drops the replica when the job ends. Continuous batching's loop is a non-daemon thread: left
        # running, it keeps the actor's process (and its copy of the model) alive as an orphan after Ray is gone.
        service = getattr(self, "service", None)
        if service is not None:
            service.engine.stop()

    def __call__(self, batch: dict) -> dict:
        records = asyncio.run(self._answer_all([(int(n), str(t)) for n, t in zip(batch["line"], batch["text"])]))
        # One JSON string per record: outputs differ in shape from line to line, which no Arrow column holds.
        return {"line": [r["line"] for r in records], "record": [json.dumps(r, ensure_ascii=False) for r in records],
                "node": [self.node] * len(records)}


def _replicas(ray, replicas: int | None, cpus: float, gpus: float) -> int:
    """The pool's size: as given, or as many as the cluster's CPUs and GPUs hold; more than it holds would wait
    forever for resources, so that is refused."""
    have = ray.cluster_resources()
    fits = [int(have.get(name, 0) // per + 1e-9) for name, per in (("CPU", cpus), ("GPU", gpus)) if per > 0]
    most = min(fits) if fits else (replicas or 1)
    if replicas is None:
        replicas = most
    if replicas < 1 or replicas > most:
        raise UserInputError(f"--ray-replicas {replicas} with {cpus:g} CPUs and {gpus:g} GPUs each: the cluster has "
                             f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs, room for {most}; pass "
                             f"fewer replicas or smaller --ray-cpus-per-replica/--ray-gpus-per-replica")
    return replicas


def run_batch_ray(model_dir, input_path, output_path, *, load_options: dict | None = None, address: str | None = None,
                  replicas: int | None = None, cpus_per_replica: float = 1.0, gpus_per_replica: float | None = None,
                  node_ip_address: str | None = None, default_max_new_tokens: int = 128, concurrency: int = 64,
                  quiet: bool = False) -> BatchSummary:
    """run_batch on a Ray cluster: one Service per replica, loaded from `model_dir` with `load_options` (those of
    load_service; the folder must be at the same path on every node). `address`: None starts a local Ray instance for
    the job and stops it after; "auto", "ray://host:port" or "host:port" joins a running cluster. Where Ray is already
    initialized in this process, the job runs there. `gpus_per_replica` None: 1 where the cluster has GPUs, else 0.
    `node_ip_address`: this machine's address as a Ray node (Ray's own guess, the network address, can hang a
    sandboxed machine; a loopback one such as 127.0.0.2 runs; 127.0.0.1 Ray rewrites to its guess).
    Summary.nodes counts the lines each node answered."""
    if cpus_per_replica < 0 or (gpus_per_replica or 0) < 0:
        raise UserInputError(f"CPUs/GPUs per replica must be >= 0, got {cpus_per_replica!r}/{gpus_per_replica!r}")
    folder = str(check_folder(model_dir).resolve())
    job = BatchJob(input_path, output_path, quiet=quiet)  # bad files are refused before a cluster starts
    ray = _import_ray()
    if not job.todo:  # all done already: no cluster to start
        with job:
            return job.summary()
    started = not ray.is_initialized()
    if started:
        options = {"include_dashboard": False} if address is None else {}  # no dashboard for a job's own instance
        if node_ip_address:
            options["_node_ip_address"] = node_ip_address
        ray.init(address=address or "local", log_to_driver=not quiet, **options)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars, context.wait_for_min_actors_s)
    try:
        if gpus_per_replica is None:
            gpus_per_replica = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        size = _replicas(ray, replicas, cpus_per_replica, gpus_per_replica)
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # ours counts lines as they are written
        # Every replica loads its model before the first batch: else the first one up takes the whole job. A
        # replica that cannot start (no room, a folder missing on its node) fails the job after this long.
        context.wait_for_min_actors_s = REPLICA_START_TIMEOUT_S
        todo = [{"line": n, "text": t} for n, t in enumerate(job.todo, job.next_line)]
        batch = max(1, min(concurrency, math.ceil(len(todo) / (4 * size))))  # several batches for every replica
        data = ray.data.from_items(todo).map_batches(
            Replica,
            fn_constructor_args=(folder, dict(load_options or {}), default_max_new_tokens, max(1, concurrency)),
            compute=ray.data.ActorPoolStrategy(size=size), batch_size=batch, num_cpus=cpus_per_replica,
            num_gpus=gpus_per_replica)
        nodes: Counter = Counter()
        with job:
            for row in data.iter_rows():
                job.write(json.loads(row["record"]))
                nodes[row["node"]] += 1
        return job.summary(nodes=dict(nodes))
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars, context.wait_for_min_actors_s = saved
        if started:
            ray.shutdown()


__all__ = ["Replica", "run_batch_ray"]
