"""Verification throughput on worker processes vs in-process, in the same run.

    python benchmarks/verify_workers.py [--candidates 24] [--top-k 5] [--workers 0] [--rounds 2]

Candidates: nuisance-augmented copies (``deepssim.metric.augment.nuisance_augment``: flips, turns,
rotation, shift, zoom, gamma, bias field, blur, noise) of the bundled real training
slices (``deepssim/sample_data/train``), each verified against ``--top-k`` real training
slices, as the audit's verify stage does it (:func:`deepssim.audit.pipeline.verify_neighbours`).
Rounds alternate in-process (``workers=1``) and pooled (``--workers``; 0 = one per core)
so that machine load hits both alike; the pooled time includes starting the workers.
Prints one JSON line per round, then the medians and their ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sample_training_slices() -> np.ndarray:
    from deepssim.config import IngestConfig
    from deepssim.io import ingest

    with tempfile.TemporaryDirectory() as tmp:
        return np.asarray(ingest([ROOT / "deepssim" / "sample_data" / "train"], IngestConfig(), 128,
                                 Path(tmp)).pixels(), dtype=np.float32)


def main() -> None:
    import torch

    from deepssim.metric.augment import nuisance_augment
    from deepssim.config import VerificationConfig
    from deepssim.audit.parallel import resolve_workers
    from deepssim.audit.pipeline import verify_neighbours

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    train = sample_training_slices()
    rng = np.random.default_rng(0)
    sources = rng.integers(0, len(train), a.candidates)
    candidates = nuisance_augment()(torch.from_numpy(train[sources])[:, None],
                                    torch.Generator().manual_seed(0))[:, 0].numpy()
    # each candidate's own source first, then other training slices, as a top-k would list them
    index = np.stack([np.r_[s, rng.choice(np.delete(np.arange(len(train)), s), a.top_k - 1, replace=False)]
                      for s in sources])
    emb_scores = np.ones(index.shape)
    pooled = resolve_workers(a.workers, a.candidates)
    times: dict[int, list[float]] = {1: [], pooled: []}
    for r in range(a.rounds):
        for workers in times:
            t0 = time.perf_counter()
            res = verify_neighbours(candidates, emb_scores, index, lambda rows: train[rows],
                                    VerificationConfig(top_k=a.top_k, workers=workers))
            seconds = time.perf_counter() - t0
            times[workers].append(seconds)
            print(json.dumps({"round": r, "workers": workers, "candidates": a.candidates, "top_k": a.top_k,
                              "seconds": round(seconds, 2), "s_per_candidate": round(seconds / a.candidates, 3),
                              "copies_found": int((res.score > 0.85).sum())}), flush=True)
    med = {w: statistics.median(t) for w, t in times.items()}
    print(json.dumps({"median_seconds": {str(w): round(t, 2) for w, t in med.items()},
                      "speed_up": round(med[1] / med[pooled], 2), "pooled_workers": pooled}))


if __name__ == "__main__":
    main()
