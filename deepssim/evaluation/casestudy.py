"""The paper's case study, as plain functions: a generator's samples, filtered and labelled
by the reference SSIM to their nearest training image *taken through the generator's grid*,
memorization by how often an image was duplicated in training, and how the gate's verdicts
agree with the labels.

Labels (``DESIGN.md``, generated images): a sample's label SSIM is
``max_j reference_ssim(sample, through_grid(train_j, grid))`` over the generator's distinct
training images, cut at the audit thresholds; a perfect memorizer scores 1.0.  Samples are
in the training images' frame (the generator never saw a flip or a turn), so no alignment is
searched for the label.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepssim.config import Thresholds
from deepssim.evaluation.scoring import LABELS, label_indices, macro_f1
from deepssim.generative.grid import through_grid
from deepssim.metric.ssim import reference_ssim


@dataclass(frozen=True)
class SampleFilter:
    """Samples a generator failed on: not finite, flat (``min_sd`` of [0, 1] intensities)
    or near-empty (less than ``min_foreground`` of the pixels above ``foreground_level``,
    the rule the shared slices were cut with)."""

    min_sd: float = 0.02
    min_foreground: float = 0.10
    foreground_level: float = 0.10

    def reason(self, image: np.ndarray) -> str:
        """'' for a usable sample, else why not."""
        if not np.all(np.isfinite(image)):
            return "not finite"
        if float(image.std()) < self.min_sd:
            return f"flat (sd {image.std():.3f} < {self.min_sd})"
        foreground = float((image > self.foreground_level).mean())
        if foreground < self.min_foreground:
            return f"near-empty (foreground {foreground:.0%} < {self.min_foreground:.0%})"
        return ""


def grid_labels(samples: np.ndarray, training: np.ndarray, grid: int, thresholds: Thresholds) -> pd.DataFrame:
    """Label each sample against the training images taken through the generator's grid.

    Args:
        samples: (N, H, W) float, the samples at output resolution.
        training: (M, H, W) float, the distinct training images at full resolution.
        grid: the generator's size (pixels a side).
    Returns:
        one row per sample: ``nearest`` (index into ``training``), ``label_ssim``, ``label``,
        ``raw_ssim`` (the same pair at full resolution, without the grid).
    """
    seen = np.stack([through_grid(t, grid) for t in training])
    rows = []
    for sample in samples:
        scores = np.array([reference_ssim(sample, t) for t in seen])
        best = int(np.argmax(scores))
        rows.append({"nearest": best, "label_ssim": float(scores[best]),
                     "raw_ssim": reference_ssim(sample, training[best])})
    table = pd.DataFrame(rows, columns=["nearest", "label_ssim", "raw_ssim"])
    table["label"] = [LABELS[i] for i in label_indices(table["label_ssim"].to_numpy(), thresholds.similar,
                                                         thresholds.duplicate)]
    return table


def memorization_by_copies(labelled: pd.DataFrame, copies: np.ndarray) -> pd.DataFrame:
    """Memorization by how often a training image was duplicated.

    Args:
        labelled: per-sample rows with ``nearest`` and ``label`` (:func:`grid_labels`).
        copies: (M,) copies of each distinct training image in the generator's training list.
    Returns:
        one row per copies level: ``images`` (distinct training images), ``training_share``
        (their share of the training list), ``duplicate_samples`` (samples labelled duplicate
        of them), ``sample_share`` (of all samples), ``memorized_images`` (with at least one
        duplicate sample) and ``memorized_fraction``.
    """
    copies = np.asarray(copies)
    dup = labelled[labelled["label"] == "duplicate"]
    n_samples = max(len(labelled), 1)
    rows = []
    for level in sorted(set(copies.tolist())):
        members = np.flatnonzero(copies == level)
        hits = dup[dup["nearest"].isin(members)]
        memorized = int(hits["nearest"].nunique())
        rows.append({"copies": int(level), "images": len(members),
                     "training_share": float(copies[members].sum() / copies.sum()),
                     "duplicate_samples": len(hits), "sample_share": len(hits) / n_samples,
                     "memorized_images": memorized, "memorized_fraction": memorized / len(members)})
    return pd.DataFrame(rows)


def gate_agreement(truth: list[str] | np.ndarray, predicted: list[str] | np.ndarray,
                   truth_scores: np.ndarray, gate_scores: np.ndarray) -> dict:
    """Per-class precision/recall/F1, macro F1, confusion and score error of the gate's
    labels and scores against the label SSIM (NaN gate scores are left out of the error)."""
    index = {name: i for i, name in enumerate(LABELS)}
    t = np.array([index[v] for v in truth], dtype=int)
    p = np.array([index[v] for v in predicted], dtype=int)
    per_class = {}
    for c, name in enumerate(LABELS):
        tp, fp, fn = (np.sum((t == c) & (p == c)), np.sum((t != c) & (p == c)), np.sum((t == c) & (p != c)))
        per_class[name] = {"support": int(np.sum(t == c)), "predicted": int(np.sum(p == c)),
                           "precision": float(tp / (tp + fp)) if tp + fp else float("nan"),
                           "recall": float(tp / (tp + fn)) if tp + fn else float("nan")}
    confusion = [[int(np.sum((t == i) & (p == j))) for j in range(len(LABELS))] for i in range(len(LABELS))]
    diff = np.asarray(gate_scores, float) - np.asarray(truth_scores, float)
    ok = np.isfinite(diff)
    by_label = {name: _error(diff[ok & (t == c)]) for c, name in enumerate(LABELS)}
    return {"n": int(len(t)), "per_class": per_class, "macro_f1": macro_f1(t, p), "confusion": confusion,
            "score_error": _error(diff[ok]), "score_error_by_label": by_label}


def _error(diff: np.ndarray) -> dict:
    if not len(diff):
        return {"n": 0, "mae": float("nan"), "bias": float("nan")}
    return {"n": int(len(diff)), "mae": float(np.mean(np.abs(diff))), "bias": float(np.mean(diff))}


# ----------------------------------------------------------------------------- files
def write_png(image: np.ndarray, path) -> np.ndarray:
    """Write a [0, 1] image as 8-bit grayscale PNG; return the pixels as written (float [0, 1])."""
    from PIL import Image

    u8 = np.round(np.clip(np.nan_to_num(image), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(u8, mode="L").save(path)
    return u8.astype(np.float32) / 255.0


def generate_samples(generator, n: int, seed: int, shape: tuple[int, int], out_dir, sample_filter: SampleFilter,
                     sample_steps: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Sample ``n`` images, up-sample them through the generator's grid to ``shape`` and write
    the usable ones to ``out_dir/sample-NNNN.png``.

    Returns the per-sample table (``sample``, ``file`` — '' when filtered — and ``reason``)
    and the written pixels (K, H, W) of the kept samples, in table order.
    """
    from deepssim.generative.diffusion import sample_images
    from deepssim.generative.grid import from_grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = sample_images(generator, n, seed, sample_steps=sample_steps)
    rows, kept = [], []
    for i, image in enumerate(raw):
        reason = sample_filter.reason(image)
        name = f"sample-{i:04d}.png"
        if not reason:
            kept.append(write_png(from_grid(image, shape), out_dir / name))
        rows.append({"sample": f"sample-{i:04d}", "file": "" if reason else name, "reason": reason})
    pixels = np.stack(kept) if kept else np.zeros((0, *shape), np.float32)
    return pd.DataFrame(rows), pixels


def write_control(images: np.ndarray, names: list[str], grid: int, out_dir) -> np.ndarray:
    """Non-member images taken through the generator's grid, written as PNG (so they carry the
    generator's resolution like its samples); returns the written pixels."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return np.stack([write_png(through_grid(im, grid), out_dir / name) for im, name in zip(images, names)])


def casestudy_summary(joined: pd.DataFrame, filtered: pd.DataFrame, copies: np.ndarray, generator_meta: dict,
                      outcome: dict, settings: dict) -> dict:
    """Everything the case-study report states, as plain JSON-able data.

    Args:
        joined: per-image rows (samples and control) with ``group``, ``label``,
            ``label_ssim``, ``nearest``, ``gate_label`` and ``gate_score``.
        filtered: the sampler's table (``sample``, ``file``, ``reason``).
        copies: (M,) copies of each distinct training image.
        generator_meta: the generator's json; ``outcome``: the audit's outcome;
        ``settings``: the case study's own parameters.
    """
    samples = joined[joined["group"] == "sample"]
    control = joined[joined["group"] != "sample"]
    audited = samples[samples["gate_label"].isin(LABELS)]
    agreement = gate_agreement(audited["label"], audited["gate_label"], audited["label_ssim"].to_numpy(),
                               audited["gate_score"].to_numpy())
    memo = memorization_by_copies(samples, copies)
    reasons = filtered.loc[filtered["reason"] != "", "reason"].str.replace(r" \(.*", "", regex=True)
    control_dups = int((control["gate_label"] == "duplicate").sum())
    dup = agreement["per_class"]["duplicate"]
    headline = (f"{int((samples['label'] == 'duplicate').sum())}/{len(samples)} samples are copies "
                f"(label SSIM > {settings['thresholds']['duplicate']}); gate duplicate recall "
                f"{dup['recall']:.3f}, precision {dup['precision']:.3f}, macro F1 {agreement['macro_f1']:.3f}, "
                f"score MAE {agreement['score_error']['mae']:.3f}; non-member control: {control_dups} duplicate(s) "
                f"of {len(control)}")
    return {
        "headline": headline,
        "generator": {k: generator_meta.get(k) for k in ("name", "generator_id", "sha256", "config", "steps_done",
                                                          "batch_size", "lr", "seed", "train_images", "command")}
        | {"distinct_training_images": int(len(copies))},
        "settings": settings,
        "thresholds": settings["thresholds"],
        "samples": {"drawn": int(len(filtered)), "filtered": int((filtered["reason"] != "").sum()),
                    "filter_reasons": reasons.value_counts().to_dict(), "audited": int(len(audited)),
                    "labels": samples["label"].value_counts().to_dict()},
        "memorization": memo.to_dict(orient="records"),
        "agreement": agreement,
        "control": {"images": int(len(control)), "gate_labels": control["gate_label"].value_counts().to_dict(),
                    "duplicates": control_dups, "max_gate_score": _max(control["gate_score"]),
                    "max_label_ssim": _max(control["label_ssim"])},
        "audit": {k: outcome.get(k) for k in ("verdict", "reason", "counts", "audit_id", "report")},
    }


def _max(values: pd.Series) -> float | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.max()) if len(values) else None
