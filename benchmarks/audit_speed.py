"""Audit cost per candidate: the embedding-only path (embed + exact search + gate) vs an
exhaustive scikit-image SSIM against every cohort image, and the verification path.

    python benchmarks/audit_speed.py [--candidates 1024] [--cohorts 10000,100000] [--ssim-pairs 200]

Real images: the bundled sample slices (``deepssim/sample_data``), ingested to model inputs
and tiled to ``--candidates`` rows of a memory-mapped ``.npy`` (what an audit embeds).
The cohort is synthetic unit embeddings (search cost does not depend on their values).
Exhaustive SSIM is timed on ``--ssim-pairs`` real pairs and extrapolated to the cohort size.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
SAMPLE = Path(__file__).resolve().parents[1] / "deepssim" / "sample_data"


def sample_pixels(work: Path, n: int) -> Path:
    """Real model inputs (128 px), tiled to ``n`` rows, as a float16 ``.npy``."""
    from deepssim.config import IngestConfig
    from deepssim.io import ingest

    base = ingest([SAMPLE], IngestConfig(), 128, work / "ingest").pixels()
    tiled = np.resize(np.asarray(base), (n,) + base.shape[1:])
    np.save(work / "pixels.npy", tiled.astype(np.float16))
    return work / "pixels.npy"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def embed_rates(pixels_path: Path, out: Path, batch: int) -> dict:
    """Images/s through ``pipeline.embed_pixels`` (mmap load + cast + forward + write) and
    of the bare forward on an in-memory array (same batches, same run)."""
    import torch

    from deepssim.metric.checkpoint import DEFAULT_MODEL, load_checkpoint
    from deepssim.metric.embed import Embedder
    from deepssim.audit.pipeline import embed_pixels

    n = int(np.load(pixels_path, mmap_mode="r").shape[0])
    rows = np.arange(n)
    embed_pixels(pixels_path, rows[:batch], DEFAULT_MODEL, out, "cpu", batch)  # warm-up
    _, pipe_s = timed(lambda: embed_pixels(pixels_path, rows, DEFAULT_MODEL, out, "cpu", batch))
    model, _ = load_checkpoint(DEFAULT_MODEL)
    emb = Embedder(model, device="cpu", batch_size=batch)
    data = np.load(pixels_path).astype(np.float32)
    emb.embed_batch(data[:batch])
    _, bare_s = timed(lambda: [emb.embed_batch(data[i:i + batch]) for i in range(0, n, batch)])
    return {"threads": torch.get_num_threads(), "batch": batch, "images": n,
            "pipeline_images_per_s": round(n / pipe_s, 1), "bare_forward_images_per_s": round(n / bare_s, 1),
            "pipeline_overhead": round(pipe_s / bare_s, 3), "embed_s": pipe_s}


def per_candidate(emb_path: Path, cohort: int, embed_s: float, n: int) -> dict:
    """Seconds per candidate of the embedding-only audit path against ``cohort`` keys."""
    from deepssim.config import SearchConfig, Thresholds
    from deepssim.audit.gate import label_scores
    from deepssim.store.search import topk_cosine

    cfg = SearchConfig()
    q = np.load(emb_path)
    keys = np.random.default_rng(0).standard_normal((cohort, q.shape[1])).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    (scores, _), search_s = timed(lambda: topk_cosine(q, keys, cfg.k, cfg.candidate_block, cfg.cohort_block))
    _, gate_s = timed(lambda: label_scores(scores[:, 0], Thresholds()))
    return {"cohort": cohort, "search_s_per_candidate": search_s / n, "gate_s_per_candidate": gate_s / n,
            "embedding_path_s_per_candidate": (embed_s + search_s + gate_s) / n}


def ssim_per_pair(pixels_path: Path, pairs: int) -> float:
    from deepssim.metric.ssim import reference_ssim

    px = np.load(pixels_path, mmap_mode="r")
    a = np.asarray(px[:pairs], np.float64)
    b = np.asarray(px[1:pairs + 1], np.float64)
    _, took = timed(lambda: [reference_ssim(x, y) for x, y in zip(a, b)])
    return took / pairs


def verify_per_pair(pixels_path: Path, pairs: int) -> float:
    from deepssim.config import VerificationConfig
    from deepssim.audit.verify import verify_pair

    px = np.load(pixels_path, mmap_mode="r")
    cfg = VerificationConfig()
    verify_pair(np.asarray(px[0], np.float32), np.asarray(px[1], np.float32), cfg)
    _, took = timed(lambda: [verify_pair(np.asarray(px[i], np.float32), np.asarray(px[i + 7], np.float32), cfg)
                             for i in range(pairs)])
    return took / pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=1024)
    ap.add_argument("--cohorts", default="10000,100000")
    ap.add_argument("--ssim-pairs", type=int, default=200)
    ap.add_argument("--verify-pairs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    from deepssim.config import VerificationConfig

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pixels = sample_pixels(work, a.candidates)
        emb = embed_rates(pixels, work / "emb.npy", a.batch)
        ssim_s = ssim_per_pair(pixels, a.ssim_pairs)
        verify_s = verify_per_pair(pixels, a.verify_pairs)
        rows = []
        for cohort in [int(c) for c in a.cohorts.split(",")]:
            row = per_candidate(work / "emb.npy", cohort, emb["embed_s"], a.candidates)
            row["exhaustive_ssim_s_per_candidate"] = ssim_s * cohort
            row["speedup_vs_exhaustive_ssim"] = round(row["exhaustive_ssim_s_per_candidate"]
                                                      / row["embedding_path_s_per_candidate"], 1)
            rows.append({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()})
    top_k = VerificationConfig().top_k
    emb.pop("embed_s")
    print(json.dumps({"embedding": emb, "ssim_s_per_pair": float(f"{ssim_s:.4g}"),
                      "verify_s_per_pair": float(f"{verify_s:.4g}"),
                      "verification_s_per_verified_candidate": float(f"{verify_s * top_k:.4g}"),
                      "verification_top_k": top_k, "per_cohort": rows}, indent=1))


if __name__ == "__main__":
    main()
