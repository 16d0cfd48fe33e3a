"""Choosing the ``similar`` / ``duplicate`` score thresholds from data.

Two routes, both returning :class:`deepssim.config.Thresholds` whose ``source`` records
how they were chosen:

* :func:`calibrate_from_cohort` needs no labelled copies: hold out whole subjects of a
  registered cohort, score each held-out image against its nearest neighbour among the
  *other* subjects — by construction no held-out image is a copy of those, so this is the
  score distribution of true non-members — and put the thresholds at high quantiles of it:
  ``similar`` at ``similar_quantile`` (default 0.99: 1 % of honest non-members get
  reported as similar), ``duplicate`` at ``duplicate_quantile`` (0.999) plus ``margin``
  (an honest non-member should essentially never fail the gate).
* :func:`calibrate_from_benchmark` uses a labelled benchmark (``deepssim.evaluation.benchmark``):
  the pair of thresholds that maximises macro F1 over {duplicate, similar, different}
  among those that keep duplicate recall >= ``min_duplicate_recall``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from deepssim.config import Thresholds
from deepssim.evaluation.scoring import calibrate_from_benchmark, subject_of

def _nearest_other_subject(embeddings: np.ndarray, subjects: np.ndarray, held: np.ndarray) -> np.ndarray:
    """For each held-out row, the best cosine against rows of subjects not held out."""
    import torch

    from deepssim.store.search import topk_cosine

    queries = torch.as_tensor(embeddings[held], dtype=torch.float32)
    keys = torch.as_tensor(embeddings[~held], dtype=torch.float32)
    scores, _ = topk_cosine(queries, keys, 1)
    return np.asarray(scores, dtype=np.float64)[:, 0]


def calibrate_from_cohort(embeddings: np.ndarray, subjects, holdout_fraction: float = 0.2,
                          similar_quantile: float = 0.99, duplicate_quantile: float = 0.999,
                          margin: float = 0.02, seed: int = 0, name: str = "cohort") -> Thresholds:
    """Thresholds from the non-member nearest-neighbour score distribution of a cohort.

    Args:
        embeddings: (N, D) unit-norm embeddings of a cohort.
        subjects: (N,) subject id per row; whole subjects are held out.
        holdout_fraction: fraction of subjects held out (at least one, at most all but one).
    Returns:
        Thresholds with ``similar`` = q(similar_quantile), ``duplicate`` =
        q(duplicate_quantile) + margin (clipped into (similar, 1]).
    """
    subjects = np.asarray(subjects)
    names = np.unique(subjects)
    if len(names) < 2:
        raise ValueError("calibration from a cohort needs at least two subjects")
    rng = np.random.default_rng(seed)
    n_held = int(np.clip(round(holdout_fraction * len(names)), 1, len(names) - 1))
    held = np.isin(subjects, rng.choice(names, n_held, replace=False))
    nn = _nearest_other_subject(np.asarray(embeddings), subjects, held)
    similar = float(np.quantile(nn, similar_quantile))
    duplicate = float(min(1.0, max(np.quantile(nn, duplicate_quantile) + margin, similar + 1e-3)))
    similar = min(similar, duplicate - 1e-3)
    return Thresholds(similar=similar, duplicate=duplicate, source=(
        f"calibrated on {name}: {len(nn)} images of {n_held} held-out subjects vs the other "
        f"{len(names) - n_held}; similar = q{similar_quantile:g} of non-member NN scores, "
        f"duplicate = q{duplicate_quantile:g} + {margin:g}"))


# --------------------------------------------------------------------------- store round trip

def calibrate_benchmark_dir(bench_dir, checkpoint=None, verification=None,
                            min_duplicate_recall: float = 0.98, method: str = "DeepSSIM + verification"
                            ) -> tuple[Thresholds, dict]:
    """Thresholds for the audit's final score, from a built benchmark (``deepssim.evaluation.benchmark``).

    The benchmark is scored exactly as an audit scores (``method``: embedding top-k, then
    verification fused by ``VerificationConfig.fusion``) and :func:`calibrate_from_benchmark`
    picks the pair with the best macro F1 whose duplicate recall >= ``min_duplicate_recall``.
    Returns the thresholds and a details dict (benchmark, method, settings, counts) for the store.
    """
    from dataclasses import asdict

    from deepssim.evaluation.benchmark import run_benchmark
    from deepssim.config import VerificationConfig

    verification = verification or VerificationConfig()
    results = run_benchmark(bench_dir, checkpoint=checkpoint, methods=[method], verification=verification)
    row = results["methods"][method]
    from deepssim.evaluation.benchmark import load_benchmark

    labels = [t["label"] for t in load_benchmark(bench_dir).truth]
    thresholds = calibrate_from_benchmark(row["scores"], labels, min_duplicate_recall,
                                          name=f"benchmark {bench_dir} ({method})")
    details = {"route": "benchmark", "benchmark": str(bench_dir), "method": method,
               "min_duplicate_recall": min_duplicate_recall, "candidates": len(labels),
               "verification": asdict(verification),
               "checkpoint": str(checkpoint) if checkpoint else "default"}
    return thresholds, details


def calibrate_store_cohort(store, cohort: str, model_id: str, **kwargs) -> tuple[Thresholds, dict]:
    """:func:`calibrate_from_cohort` on a registered cohort's embeddings (``model_id``); a
    row's subject is the first folder of its image id.  These thresholds describe
    honest non-members' *embedding* scores; an audit's fused score (max of embedding and
    verification) is never lower, so they err towards flagging, never towards missing.
    Subjects follow the same rule as retraining (:func:`deepssim.evaluation.scoring.subject_of`)."""

    images = store.cohort_images(cohort)
    emb = store.cohort_embeddings(cohort, model_id)
    volumes = images["volume_id"] if "volume_id" in images else [None] * len(images)
    subjects = pd.Series([subject_of(str(i), v if isinstance(v, str) and v else None)
                          for i, v in zip(images["image_id"], volumes)])
    thresholds = calibrate_from_cohort(np.asarray(emb), subjects.to_numpy(), name=f"cohort {cohort}", **kwargs)
    return thresholds, {"route": "cohort", "cohort": cohort, "model_id": model_id, "images": len(images),
                        "subjects": int(subjects.nunique())}


def latest_thresholds(store, cohort: str | None) -> tuple[Thresholds, str] | None:
    """The latest calibration recorded for ``cohort``, else the latest global one (recorded
    with no cohort); ``None`` when there is neither.  Returns the thresholds (their
    ``source`` names the calibration id and how it was made) and the calibration id."""
    own = store.latest_calibration(cohort) if cohort is not None else None
    row = own or store.latest_calibration(None)
    if row is None:
        return None
    scope = f"cohort {cohort}" if own else "global"
    return Thresholds(similar=float(row["similar"]), duplicate=float(row["duplicate"]),
                      source=f"calibration {row['calibration_id']} ({scope}): {row['source']}"), row["calibration_id"]
