"""Task-runner choice and the sharded (distributed) versions of ingest and embed.

``thread`` (the default) keeps the flows as they were: every stage runs in the flow
process.  ``dask`` runs the flow on a :class:`prefect_dask.DaskTaskRunner` — an existing
cluster (``address``) or a local one of ``n_workers`` processes — and the flows then
shard ingestion and embedding: one task per shard of files or rows, submitted to the
workers, each writing files in its own folder of the run's work dir and returning paths.
The flow process merges the shards and stays the only process that opens DuckDB.
"""
from __future__ import annotations

import os
from pathlib import Path

from prefect.context import FlowRunContext

from deepssim.config import IngestConfig
from deepssim.audit import DEFAULT_SHARD_FILES, merge_embeddings, merge_ingested, plan_shards, split_rows
from tasks.embed import embed_task
from tasks.ingest import ingest_task

RUNNERS = ("thread", "dask")
DEFAULT_EMBED_SHARD_ROWS = 4096


def make_task_runner(kind: str = "thread", address: str | None = None, n_workers: int = 2):
    """A Prefect task runner for ``kind``; None means the flow's default (threads)."""
    if kind not in RUNNERS:
        raise ValueError(f"unknown task runner {kind!r} (choose from {', '.join(RUNNERS)})")
    if kind == "thread":
        if address:
            raise ValueError("--dask-address needs --task-runner dask")
        return None
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, n_workers)))
    # one task per worker process; torch threads split the cores instead of oversubscribing
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": n_workers, "processes": True, "threads_per_worker": 1, "dashboard_address": None,
        "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}})


def with_runner(flow, kind: str = "thread", address: str | None = None, n_workers: int = 2):
    """``flow`` with the chosen task runner (unchanged for ``thread``)."""
    runner = make_task_runner(kind, address, n_workers)
    return flow if runner is None else flow.with_options(task_runner=runner)


def distributed() -> bool:
    """Whether the running flow's task runner is a Dask runner (then stages are sharded)."""
    ctx = FlowRunContext.get()
    return ctx is not None and type(ctx.task_runner).__name__ == "DaskTaskRunner"


def ingest_stage(paths: list[str], work: Path, config: IngestConfig, size: int, root: str | None,
                 shard_files: int = DEFAULT_SHARD_FILES) -> dict:
    """Ingest ``paths``: one task in the flow process, or shards submitted to workers."""
    if not distributed():
        return ingest_task(paths, str(work), config, size, root)
    plan = plan_shards(paths, config, shard_files, root)
    futures = [ingest_task.submit(files, str(work / f"shard-{i:05d}"), config, size, plan.root)
               for i, files in enumerate(plan.shards)]
    parts = [f.result() for f in futures]
    return {**merge_ingested(parts, work, size), "root": plan.root}


def embed_stage(pixels_path: str, rows: list[int], model_path: str, out_path: str, device: str,
                batch_size: int, label: str, shard_rows: int = DEFAULT_EMBED_SHARD_ROWS,
                precision: str = "auto") -> str:
    """Embed ``pixels[rows]`` into ``out_path``: one task, or row shards on the workers."""
    if not distributed():
        return embed_task(pixels_path, rows, model_path, out_path, device, batch_size, label=label,
                          precision=precision)
    out = Path(out_path)
    futures = [embed_task.submit(pixels_path, chunk, model_path, str(out.with_name(f"{out.stem}-{i:05d}.npy")),
                                 device, batch_size, label=f"{label} shard {i}", precision=precision)
               for i, chunk in enumerate(split_rows(rows, shard_rows))]
    return str(merge_embeddings([f.result() for f in futures], out))
