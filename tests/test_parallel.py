"""Verification on worker processes: same results, in order, errors surface."""
import multiprocessing
import os

import numpy as np
import pytest

from deepssim.audit import parallel
from deepssim.config import VerificationConfig
from deepssim.audit.pipeline import verify_neighbours

from realdata import load_slice as load
from test_verify import disguised_copy


_BOTH_WORKERS = None  # a fork-inherited Barrier(2), set by the test


def _pid_and_square(x: int) -> tuple[int, int]:
    # each worker's first item waits for the other worker: on a loaded machine one worker
    # could otherwise drain all items before the second one starts (seen once in a run)
    global _BOTH_WORKERS
    if _BOTH_WORKERS is not None:
        _BOTH_WORKERS.wait(timeout=60)
        _BOTH_WORKERS = None
    return os.getpid(), x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("item 3 is bad")
    return x


def test_ordered_map_keeps_order_and_uses_other_processes():
    global _BOTH_WORKERS
    _BOTH_WORKERS = multiprocessing.get_context("fork").Barrier(2)
    try:
        got = list(parallel.ordered_map(_pid_and_square, iter(range(12)), 12, workers=2))
    finally:
        _BOTH_WORKERS = None
    assert [sq for _, sq in got] == [x * x for x in range(12)]
    pids = {pid for pid, _ in got}
    assert os.getpid() not in pids and len(pids) == 2


def test_a_worker_error_reaches_the_caller():
    with pytest.raises(ValueError, match="item 3 is bad"):
        list(parallel.ordered_map(_fail_on_three, iter(range(8)), 8, workers=2))


def test_worker_count_resolution(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 16)
    assert parallel.resolve_workers(0, 1000) == parallel.MAX_AUTO_WORKERS
    assert parallel.resolve_workers(3, 1000) == 3
    assert parallel.resolve_workers(0, 5) == 2  # too few items to feed more workers
    assert parallel.resolve_workers(4, 1) == 1
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert parallel.resolve_workers(4, 1000) == 1  # a daemonic process may not have children
    with pytest.raises(ValueError):
        parallel.resolve_workers(-1, 10)
    with pytest.raises(ValueError):
        VerificationConfig(workers=-1)


def test_verification_on_workers_equals_in_process():
    """Four candidates (two disguised copies, two unrelated) against two references each:
    the same scores (bit for bit), nearest images and alignments on 2 worker processes as
    in-process."""
    train = np.stack([load("colin27", 90), load("heudiconv_crlab", 15), load("colin27", 60)])
    cands = np.stack([disguised_copy(train[0]), load("nibabel_example4d", 12),
                      disguised_copy(train[1]), load("icbm152_2009_template", 40)])
    emb_scores = np.full((4, 2), 0.9)
    emb_index = np.array([[2, 0], [0, 1], [1, 2], [0, 2]])
    results = {w: verify_neighbours(cands, emb_scores, emb_index, lambda rows: train[rows],
                                    VerificationConfig(top_k=2, workers=w)) for w in (1, 2)}
    serial, pooled = results[1], results[2]
    assert pooled.score.tolist() == serial.score.tolist()  # to the bit: audits must be repeatable
    assert pooled.alignment == serial.alignment
    assert pooled.nearest.tolist() == serial.nearest.tolist() == [0, serial.nearest[1], 1, serial.nearest[3]]
    assert pooled.verified.all() and serial.score[[0, 2]].min() > 0.85 and serial.score[[1, 3]].max() < 0.85


def test_pool_works_from_a_script_without_a_file(tmp_path):
    """A script piped to ``python -`` (or one without a ``__main__`` guard) must not be
    re-run by the workers: the pool must neither break nor repeat the caller's work."""
    import subprocess
    import sys

    marker = tmp_path / "runs.txt"
    script = f"""
from deepssim.audit.parallel import ordered_map
with open({str(marker)!r}, "a") as f:
    f.write("ran\\n")
print(sum(ordered_map(abs, iter(range(-10, 0)), 10, workers=2)))
"""
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "55"
    assert marker.read_text() == "ran\n"  # the top level ran once, not once per worker
