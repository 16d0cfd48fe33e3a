"""Run a CPU-bound function over many items on worker processes, results in input order.

The verification (:mod:`deepssim.audit.verify`) is many small torch operations on 128×128 images:
torch's intra-op threads do not speed it up (0.52 s per pair on one thread, 0.54 on two,
measured on the 2-core box), so the cores are used by running candidates side by side in
separate processes instead, each with one torch thread.

Workers are forked on Linux and set torch to one thread before any work, as torch's own
DataLoader workers do (a forked child must not use the parent's OpenMP pool).  Not
``spawn``: a spawned worker re-runs the caller's main script — an unguarded researcher's
script would run again in every worker, a script piped to ``python -`` cannot be re-run at
all (measured: the pool broke) — and pays ~4 s to import torch.  Elsewhere (macOS,
Windows) the platform default, ``spawn``, is used and the usual ``if __name__ ==
"__main__"`` guard applies.  A worker that raises, or dies, raises in the caller: a failed
verification never becomes a result.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_AUTO_WORKERS = 8  # each worker holds its own torch (~0.4 GB resident)
MIN_ITEMS_PER_WORKER = 2  # below this a worker's start-up costs more than it saves


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int, n_items: int) -> int:
    """Processes to use for ``n_items``: ``workers`` (0 = one per available core, at most
    ``MAX_AUTO_WORKERS``), no more than ``n_items / MIN_ITEMS_PER_WORKER``, and 1 (run
    in-process) inside a daemonic process, which may not have children (e.g. a Dask worker)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: one per core), got {workers}")
    wanted = workers or min(available_cores(), MAX_AUTO_WORKERS)
    if multiprocessing.current_process().daemon:
        return 1
    return max(1, min(wanted, n_items // MIN_ITEMS_PER_WORKER))


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], n_items: int, workers: int = 0) -> Iterator[R]:
    """Yield ``fn(item)`` for each of the ``n_items`` ``items``, in order.

    ``fn`` must be a module-level function and items picklable when more than one worker
    runs.  At most two items per worker are in flight, so a long iterable of large arrays
    is never held in memory at once."""
    n = resolve_workers(workers, n_items)
    if n == 1:
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ProcessPoolExecutor(max_workers=n, mp_context=context, initializer=_one_torch_thread)
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # on an error (or an abandoned generator) do not run what is still queued
        pool.shutdown(wait=True, cancel_futures=True)
