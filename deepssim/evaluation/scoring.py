"""The arithmetic that benchmark, calibration and retraining evaluation share: the three
labels, scores -> label indices, macro F1, the threshold pair that best separates labelled
scores, and the subject of an image id.  It imports nothing of the project but its settings, so the
modules above it (``benchmark``, ``calibrate``, ``retraining``) no longer import each other
in a circle.
"""
from __future__ import annotations

import numpy as np

from deepssim.config import Thresholds

LABELS = ("different", "similar", "duplicate")


def label_indices(scores: np.ndarray, similar: float, duplicate: float) -> np.ndarray:
    """Scores (N,) -> int labels (N,): 0 different, 1 similar, 2 duplicate (see LABELS)."""
    scores = np.asarray(scores)
    return (scores > similar).astype(int) + (scores > duplicate).astype(int)


def macro_f1(truth: np.ndarray, predicted: np.ndarray, n_classes: int = 3) -> float:
    """Unweighted mean F1 over the classes present in ``truth`` or ``predicted``."""
    f1s = []
    for c in range(n_classes):
        tp = np.sum((truth == c) & (predicted == c))
        fp = np.sum((truth != c) & (predicted == c))
        fn = np.sum((truth == c) & (predicted != c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def _as_int_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind in "US O":
        index = {name: i for i, name in enumerate(LABELS)}
        return np.array([index[str(v)] for v in labels])
    return labels.astype(int)


def _grid(scores: np.ndarray, steps: int) -> np.ndarray:
    """Candidate cut points: midpoints between sorted unique scores, thinned to ``steps``."""
    u = np.unique(scores)
    cuts = np.concatenate([[u[0] - 1e-6], (u[1:] + u[:-1]) / 2, [u[-1]]])
    if len(cuts) > steps:
        cuts = np.unique(np.quantile(cuts, np.linspace(0, 1, steps)))
    return np.clip(cuts, -1.0, 1.0)


def calibrate_from_benchmark(scores, truth_labels, min_duplicate_recall: float = 0.98,
                             steps: int = 200, name: str = "benchmark") -> Thresholds:
    """Thresholds maximising macro F1 subject to a duplicate-recall floor.

    Args:
        scores: (N,) best score per candidate (any method: embedding or verified).
        truth_labels: (N,) 'different'|'similar'|'duplicate' (or 0/1/2).
        min_duplicate_recall: the fraction of true duplicates that must score above
            ``duplicate``; the highest feasible ``duplicate`` cut satisfies it.
    Returns:
        Thresholds; ``source`` states the macro F1 and duplicate recall achieved.
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = _as_int_labels(truth_labels)
    is_dup = truth == 2
    cuts = _grid(scores, steps)
    best = None
    for dup_cut in cuts:
        recall = float(np.mean(scores[is_dup] > dup_cut)) if is_dup.any() else 1.0
        if recall < min_duplicate_recall:
            continue
        for sim_cut in cuts[cuts < dup_cut]:
            f1 = macro_f1(truth, label_indices(scores, sim_cut, dup_cut))
            if best is None or f1 > best[0] + 1e-12:
                best = (f1, float(sim_cut), float(dup_cut), recall)
    if best is None:
        raise ValueError("no threshold pair reaches the duplicate-recall floor")
    f1, sim_cut, dup_cut, recall = best
    return Thresholds(similar=max(-1.0, sim_cut), duplicate=min(1.0, dup_cut), source=(
        f"calibrated on {name}: macro F1 {f1:.3f} at duplicate recall {recall:.3f} "
        f"(floor {min_duplicate_recall:g}, {len(scores)} candidates)"))


def subject_of(image_id: str, volume_id: str | None = None) -> str:
    """The subject (the unit never split between training and evaluation) of a stored image.

    Rule: the first POSIX path component of ``image_id`` — a cohort is expected to be
    registered as one folder per subject (``root/<subject>/...``).  An image directly
    under the root has no folder: a volume slice then belongs to its volume (the image
    id without ``#axis=index``), a 2D file is its own subject.  ``volume_id`` is used
    when it is given and the image id has no folder.
    """
    path = image_id.split("#", 1)[0]
    if "/" in path:
        return path.split("/", 1)[0]
    if volume_id:
        return str(volume_id).split("#", 1)[0]
    return path
