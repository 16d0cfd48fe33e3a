"""The stages of registration and audit as plain functions over files.

Prefect tasks (``tasks/``) wrap these one-to-one; nothing here knows about Prefect, so
the same stages run from a notebook or a test.  Stages exchange *paths* (manifest
Parquet, pixel ``.npy``, embedding ``.npy``), never pixels, so that nothing derived from
patient images ends up in an orchestrator's database.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from deepssim.config import AuditSettings, Thresholds, VerificationConfig
from deepssim.audit.gate import label_scores

MANIFEST_FILE = "manifest.parquet"
EMBEDDINGS_FILE = "embeddings.npy"


# ----------------------------------------------------------------------------- files
def write_manifest(manifest: pd.DataFrame, work_dir: Path, name: str = MANIFEST_FILE) -> Path:
    path = Path(work_dir) / name
    frame = manifest.copy()
    for col in frame.columns:  # mixed object columns (None + str) must be strings for Parquet
        if frame[col].dtype == object:
            frame[col] = frame[col].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    frame.to_parquet(path, index=False)
    return path


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def ok_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """Accepted images in pixel-row order."""
    ok = manifest[(manifest["status"] == "ok") & (manifest["row"] >= 0)]
    return ok.sort_values("row").reset_index(drop=True)


def input_sha256(pixels: np.ndarray) -> list[str]:
    """sha256 of each model input (float16 bytes): the key embeddings are stored under."""
    return [hashlib.sha256(np.ascontiguousarray(p, dtype=np.float16).tobytes()).hexdigest() for p in pixels]


# ----------------------------------------------------------------------------- embedding
def embed_pixels(pixels_path: Path, rows: np.ndarray, model_path: Path, out_path: Path,
                 device: str = "auto", batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None, precision: str = "auto") -> Path:
    """Embed ``pixels[rows]`` with the checkpoint at ``model_path``; write (len(rows), D)
    float32 to ``out_path``.  ``progress(done, total)`` after each batch."""
    from deepssim.metric.checkpoint import load_checkpoint
    from deepssim.metric.embed import Embedder

    pixels = np.load(pixels_path, mmap_mode="r")
    model, _ = load_checkpoint(model_path)
    embedder = Embedder(model, device=device, batch_size=batch_size, precision=precision)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32,
                                    shape=(len(rows), model.config.embedding_dim))
    starts = range(0, len(rows), batch_size)
    for start, batch in zip(starts, _prefetched(pixels, rows, starts, batch_size)):
        out[start:start + len(batch)] = embedder.embed_batch(batch)
        if progress:
            progress(start + len(batch), len(rows))
    out.flush()
    del out
    return Path(out_path)


def _prefetched(pixels: np.ndarray, rows: np.ndarray, starts: range, batch_size: int):
    """Yield float32 batches ``pixels[rows[start:start + batch_size]]``, reading the next
    batch from the memory map in a background thread while the current one is embedded
    (numpy and torch release the GIL, so loading overlaps the forward pass)."""
    from concurrent.futures import ThreadPoolExecutor

    def load(start: int) -> np.ndarray:
        return np.asarray(pixels[rows[start:start + batch_size]], dtype=np.float32)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepssim-prefetch") as pool:
        pending = pool.submit(load, starts[0]) if len(starts) else None
        for i in range(len(starts)):
            batch = pending.result()
            pending = pool.submit(load, starts[i + 1]) if i + 1 < len(starts) else None
            yield batch


# ----------------------------------------------------------------------------- verification
@dataclass
class Verified:
    """Per candidate: final score, index (into the cohort order) of the best match,
    whether verification ran, the alignment found (its description, and the
    :class:`~deepssim.audit.verify.Alignment` itself where it decided the score and the
    nearest image, else None), and the verification score alone (NaN where verification did
    not run)."""

    score: np.ndarray
    nearest: np.ndarray
    verified: np.ndarray
    alignment: list[str]
    verification_score: np.ndarray | None = None
    alignments: list | None = None


def fuse_scores(embedding: np.ndarray, verification: np.ndarray, fusion: str) -> np.ndarray:
    """Final score from the best embedding score and the best verification score.

    ``"max"``: a candidate is as suspicious as the stronger of the two pieces of evidence
    (recall first: a copy whose alignment search fails is still caught by the learned score,
    and a copy the encoder misjudges is still caught by verification).  ``"verification"``:
    the verification score alone."""
    if fusion == "max":
        return np.maximum(embedding, verification)
    if fusion == "verification":
        return np.asarray(verification, np.float64).copy()
    raise ValueError(f"unknown fusion {fusion!r} (max | verification)")


def verify_neighbours(candidates: np.ndarray, emb_scores: np.ndarray, emb_index: np.ndarray,
                      load_references: Callable[[np.ndarray], np.ndarray],
                      config: VerificationConfig,
                      progress: Callable[[int, int], None] | None = None) -> Verified:
    """Verify each candidate against its top-k training images and fuse the evidence.

    Candidates whose best embedding score is below ``config.floor`` are not verified: their
    score is the embedding score.  For the others every one of the top ``config.top_k``
    neighbours, and further ones within ``config.margin`` of the best up to ``config.max_k``
    (:meth:`VerificationConfig.neighbours_to_verify`; ``emb_index`` must hold that many
    columns to use them), is verified (:func:`deepssim.audit.verify.verify_candidate`); the best
    verification score is fused with the best embedding score by ``config.fusion``
    (:func:`fuse_scores`), and the nearest image is the one verification matched best.
    ``load_references(indices) -> (n, S, S)`` fetches training pixels by cohort index.
    When the fused score comes from the embedding, the nearest image is the embedding's
    top match and ``alignment`` says so (the evidence names what produced the score).
    ``progress(done, total)`` is called after each verified candidate.  Candidates are
    verified on ``config.workers`` processes (:func:`deepssim.audit.parallel.ordered_map`).
    """
    from deepssim.metric.embed import resolve_device
    from deepssim.audit.parallel import ordered_map

    q = len(candidates)
    score = emb_scores[:, 0].astype(np.float64).copy() if q else np.zeros(0)
    nearest = emb_index[:, 0].copy() if q else np.zeros(0, np.int64)
    verified = np.zeros(q, dtype=bool)
    ver_score = np.full(q, np.nan)
    alignment, alignments = [""] * q, [None] * q
    if not config.enabled:
        return Verified(score, nearest, verified, alignment, ver_score, alignments)
    todo = np.flatnonzero(emb_scores[:, 0] >= config.floor) if q else np.zeros(0, np.int64)
    jobs = ((np.asarray(candidates[i], np.float32),
             load_references(emb_index[i, :config.neighbours_to_verify(emb_scores[i])]), config) for i in todo)
    # a GPU is shared by one process: forked workers cannot use the CUDA context of this one
    workers = config.workers if resolve_device(config.device).type == "cpu" else 1
    for done, (i, results) in enumerate(zip(todo, ordered_map(_verify_job, jobs, len(todo), workers)), 1):
        best = int(np.nanargmax([r.score for r in results]))  # NaN: a neighbour the search set aside
        ver_score[i] = results[best].score
        score[i] = float(fuse_scores(np.float64(emb_scores[i, 0]), np.float64(ver_score[i]), config.fusion))
        verified[i] = True
        if score[i] > ver_score[i]:  # the learned score won the fusion
            alignment[i] = f"learned score {score[i]:.3f} (best aligned SSIM only {ver_score[i]:.3f})"
        else:
            nearest[i], alignment[i], alignments[i] = emb_index[i, best], results[best].transform, results[best]
        if progress:
            progress(done, len(todo))
    return Verified(score, nearest, verified, alignment, ver_score, alignments)


def _verify_job(job: tuple[np.ndarray, np.ndarray, VerificationConfig]) -> list:
    """One candidate against its references (runs on a verification worker)."""
    from deepssim.audit.verify import verify_candidate

    candidate, references, config = job
    return verify_candidate(candidate, references, config)


# ----------------------------------------------------------------------------- verdicts
ALIGNMENT_COLUMNS = ("align_flip", "align_turns", "align_degrees", "align_scale", "align_dy", "align_dx")


def alignment_columns(alignments: list) -> dict[str, list]:
    """The geometry of each deciding alignment (NaN where none) as columns of the internal
    verdict table, so the report can show the training image in the candidate's frame
    without verifying again."""
    def row(a):
        if a is None:
            return (np.nan,) * len(ALIGNMENT_COLUMNS)
        return (float(a.dihedral[0]), float(a.dihedral[1]), a.degrees, a.scale, *a.shift)
    return dict(zip(ALIGNMENT_COLUMNS, map(list, zip(*map(row, alignments))))) if alignments else \
        {c: [] for c in ALIGNMENT_COLUMNS}


def alignment_of(row) -> "object | None":
    """The :class:`~deepssim.audit.verify.Alignment` an internal verdict row recorded, or None."""
    from deepssim.audit.verify import Alignment

    values = [getattr(row, c, np.nan) for c in ALIGNMENT_COLUMNS]
    if any(pd.isna(v) for v in values):
        return None
    flip, turns, degrees, scale, dy, dx = values
    return Alignment(score=float("nan"), transform="", dihedral=(bool(flip), int(turns)), degrees=float(degrees),
                     scale=float(scale), shift=(float(dy), float(dx)))


def verdict_table(candidates: pd.DataFrame, emb_scores: np.ndarray, result: Verified,
                  cohort_images: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """The per-candidate result table (one row per audited image, contract columns first)."""
    near = cohort_images.iloc[result.nearest] if len(result.nearest) else cohort_images.iloc[:0]
    table = pd.DataFrame({
        "image_id": candidates["image_id"].to_numpy(),
        "source_path": candidates["source_path"].to_numpy(),
        "label": label_scores(result.score, thresholds),
        "score": np.round(result.score, 6),
        "nearest_id": near["image_id"].to_numpy(),
        "nearest_path": near["source_path"].to_numpy(),
        "embedding_score": np.round(emb_scores[:, 0], 6) if len(emb_scores) else [],
        "verified": result.verified,
        "alignment": result.alignment,
        "volume_id": candidates["volume_id"].to_numpy() if "volume_id" in candidates else None,
        "row": candidates["row"].to_numpy(),
        "nearest_index": result.nearest,
        **alignment_columns(result.alignments or [None] * len(result.nearest)),
    })
    table["volume_id"] = blank_to_none(table["volume_id"])
    return table.sort_values("image_id", kind="stable").reset_index(drop=True)


def blank_to_none(values: pd.Series) -> pd.Series:
    """Empty strings (2D images have no volume) as None, so they store as NULL."""
    return values.where(values.astype(str).str.len() > 0, None)


def settings_record(settings: AuditSettings) -> dict:
    """Settings as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(settings.as_record()))
