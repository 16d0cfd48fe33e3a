"""Exact search scale: streamed ``topk_cosine`` vs a bare torch GEMM + topk, and peak
memory of a store-streamed search in a fresh process.

    python benchmarks/search_scale.py speed  [--queries 2000] [--sizes 10000,50000,100000]
    python benchmarks/search_scale.py memory [--cohort 100000] [--queries 10000]

``speed`` prints one JSON line per cohort size: seconds of the streamed search (array
blocks, and Arrow blocks out of a real DuckDB store), of one dense ``q @ K.T`` + ``topk``
(the floor: same arithmetic, no streaming), and their ratio, all measured in one run.
``memory`` writes synthetic unit embeddings into a real DuckDB store, then runs the
audit's search in a subprocess and reports its peak RSS (``resource.getrusage``).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
DIM = 256


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_store(path: Path, n: int, seed: int = 0) -> str:
    """A real store with cohort ``bench`` of ``n`` images; returns the model id."""
    import pandas as pd

    from deepssim.metric.checkpoint import DEFAULT_MODEL, read_meta
    from deepssim.store.database import Store

    keys = unit(n, seed)
    hashes = [f"{i:064x}" for i in range(n)]
    rows = pd.DataFrame({"image_id": [f"img/{i:08d}.png" for i in range(n)], "source_path": "x", "sha256": hashes,
                         "input_sha256": hashes, "height": 128, "width": 128, "volume_id": None,
                         "pixel_row": np.arange(n, dtype=np.int32)})
    with Store(str(path)) as store:
        model_id = store.ensure_model(read_meta(DEFAULT_MODEL), DEFAULT_MODEL)
        store.register("bench", rows, pd.DataFrame({"input_sha256": hashes, "embedding": list(keys)}),
                       model_id, "none.npy", [])
    return model_id


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved(a, b, repeats: int) -> tuple[float, float]:
    """Best-of times of ``a`` and ``b`` run alternately, so load changes on a shared
    machine hit both alike."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(best_of(a, 1))
        tb.append(best_of(b, 1))
    return min(ta), min(tb)


def speed(queries: int, sizes: list[int], k: int, repeats: int) -> None:
    import torch

    from deepssim.config import SearchConfig
    from deepssim.store.search import topk_cosine
    from deepssim.store.database import Store

    cfg = SearchConfig()
    q = unit(queries, 1)
    for n in sizes:
        keys = unit(n, 0)
        qt, kt = torch.from_numpy(q), torch.from_numpy(keys)
        dense, streamed = interleaved(lambda: torch.topk(qt @ kt.T, k, dim=1),
                                      lambda: topk_cosine(q, keys, k, cfg.candidate_block, cfg.cohort_block),
                                      repeats)
        with tempfile.TemporaryDirectory() as tmp:
            model_id = build_store(Path(tmp) / "s.duckdb", n)
            with Store(str(Path(tmp) / "s.duckdb"), read_only=True) as store:
                blocks = lambda: store.iter_cohort_embeddings("bench", model_id, cfg.cohort_block)  # noqa: E731
                from_store = best_of(lambda: topk_cosine(q, blocks, k, cfg.candidate_block, cfg.cohort_block),
                                     repeats)
        print(json.dumps({"queries": queries, "cohort": n, "k": k, "threads": torch.get_num_threads(),
                          "dense_gemm_topk_s": round(dense, 4), "streamed_array_s": round(streamed, 4),
                          "streamed_store_s": round(from_store, 4),
                          "ratio_array": round(streamed / dense, 3), "ratio_store": round(from_store / dense, 3)}),
              flush=True)


def _child(db: str, model_id: str, queries: int, k: int) -> None:
    """Runs in a fresh process: the audit's search against the store, then peak RSS."""
    from deepssim.config import SearchConfig
    from deepssim.store.search import topk_cosine
    from deepssim.store.database import Store

    cfg = SearchConfig()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q = unit(queries, 1)
    t0 = time.perf_counter()
    with Store(db, read_only=True) as store:
        s, i = topk_cosine(q, lambda: store.iter_cohort_embeddings("bench", model_id, cfg.cohort_block), k,
                           cfg.candidate_block, cfg.cohort_block)
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"search_s": round(took, 2), "peak_rss_mb": round(peak / 1024, 1),
                      "rss_after_imports_mb": round(base / 1024, 1), "result_shape": list(s.shape)}))


def memory(cohort: int, queries: int, k: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "m.duckdb")
        t0 = time.perf_counter()
        model_id = build_store(Path(db), cohort)
        built = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "_child", db, model_id, str(queries), str(k)],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        size_mb = Path(db).stat().st_size / 2**20
    print(json.dumps({"cohort": cohort, "queries": queries, "k": k, "store_build_s": round(built, 2),
                      "db_mb": round(size_mb, 1), **json.loads(out)}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["speed", "memory"])
    ap.add_argument("--queries", type=int)
    ap.add_argument("--sizes", default="10000,50000,100000")
    ap.add_argument("--cohort", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.mode == "speed":
        speed(a.queries or 2000, [int(s) for s in a.sizes.split(",")], a.k, a.repeats)
    else:
        memory(a.cohort, a.queries or 10_000, a.k)


if __name__ == "__main__":
    main()
