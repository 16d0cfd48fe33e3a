"""Retraining data, the fixed evaluation set and the champion/challenger decision.

Plain library (no Prefect).  The retrain flow (``flows/retrain.py``) strings these together:

1. :func:`cohort_image_set` turns a registered cohort's stored pixels into an
   :class:`~deepssim.metric.trainingdata.ImageSet`, one subject per :func:`subject_of`.
2. :func:`split_holdout` holds out whole subjects by a *stable hash of the subject name*:
   a subject held out once is held out on every later retraining, whatever cohorts are
   added, so the evaluation set does not drift into the training set.
3. :func:`retrain_pools` builds the training pool (cohort training subjects + procedural
   phantoms), a validation pool for the trainer's best-step selection (phantoms only, so
   selection never sees the evaluation images) and the evaluation pool (held-out cohort
   subjects + phantoms drawn from a constant seed).
4. :func:`evaluate_model` scores a model on the fixed pairs (:func:`deepssim.metric.train.evaluate`)
   and, optionally, on a small memorization benchmark built from the evaluation pool.
5. :func:`decide` applies the promotion rule (see :class:`PromotionRule`).
"""
from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepssim.evaluation.scoring import subject_of
from deepssim.metric.trainingdata import ImageSet, phantoms

EVAL_PHANTOM_SEED = 20260611  # constant: the evaluation phantoms never change between runs
EVAL_PAIR_SEED = 1234
BENCHMARK_SEED = 7
_SLICE = re.compile(r"#([xyz])=(\d+)$")
_TRAILING = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class RetrainConfig:
    """Everything a retraining run depends on (recorded with the challenger).

    ``init``: ``"champion"`` fine-tunes the current champion, ``"scratch"`` starts from
    random weights, any other value is the path of a checkpoint to fine-tune.  ``steps``/``time_budget_s`` bound training (the budget wins: the
    schedule is fitted to the steps that fit; the defaults suit a 2-core CPU, a GPU does
    far more steps in the same budget).  ``benchmark_per_kind`` planted candidates of
    each kind for the benchmark macro F1 (0 turns the benchmark off).
    """

    init: str = "champion"
    steps: int = 600
    time_budget_s: float | None = 300.0
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 20
    eval_every: int = 100
    seed: int = 0
    device: str = "auto"
    holdout_fraction: float = 0.25
    train_phantom_volumes: int = 8
    val_phantom_volumes: int = 2
    eval_phantom_volumes: int = 4
    eval_pairs: int = 512
    benchmark_per_kind: int = 12

    def __post_init__(self) -> None:
        if self.init not in ("champion", "scratch") and not Path(self.init).is_file():
            raise ValueError(f"init must be 'champion', 'scratch' or a checkpoint path, got {self.init!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError("holdout_fraction must lie in (0, 1)")
        if self.steps < 0 or self.batch_size < 2:
            raise ValueError("steps must be >= 0 and batch_size >= 2")

    @classmethod
    def from_record(cls, data: dict | None) -> "RetrainConfig":
        """From a dict; unknown keys are an error (a typo must not pass silently)."""
        from deepssim.config import from_dict

        return from_dict(cls, dict(data or {}))

    def as_record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PromotionRule:
    """When a challenger replaces the champion.

    Both models are scored on the same fixed evaluation set.  The *criterion* is the one
    the trainer selects steps by: ``mae_augmented + max(0, 0.98 - copy_rate_gt_0.85)``
    (error to the aligned SSIM on misaligned pairs, plus a penalty when copies stop
    scoring as duplicates).  The challenger is promoted only if

    * its criterion is lower than the champion's by at least ``min_improvement``;
    * its rate of dissimilar pairs kept below the similar threshold is not lower by more
      than ``max_different_rate_drop`` (no new false alarms);
    * when the benchmark ran, its macro F1 is not lower by more than ``max_f1_drop``.
    """

    min_improvement: float = 0.005
    max_different_rate_drop: float = 0.02
    max_f1_drop: float = 0.0


def criterion(metrics: dict) -> float:
    """Lower is better; see :class:`PromotionRule`."""
    return float(metrics["mae_augmented"]) + max(0.0, 0.98 - float(metrics["copy_rate_gt_0.85"]))


def _holdout_key(subject: str) -> float:
    digest = hashlib.sha256(f"deepssim-holdout:{subject}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16 ** 12)


def split_holdout(subjects: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) subjects by a stable hash of each name.

    A subject is held out when its hash falls below ``fraction``; at least one subject
    is held out and one kept when there are two or more.  With one subject nothing is
    held out (the evaluation set then holds phantoms only)."""
    names = sorted(set(subjects))
    if len(names) < 2:
        return names, []
    keyed = sorted(names, key=_holdout_key)
    held = [n for n in keyed if _holdout_key(n) < fraction]
    if not held:
        held = keyed[:1]
    if len(held) == len(names):
        held = held[:-1]
    return sorted(set(names) - set(held)), sorted(held)


def _volume_and_position(image_id: str, volume_id: str | None) -> tuple[str, int]:
    """Slices of one volume (``#z=12``) or numbered 2D files of one series
    (``sub/scan_s012.png``) share a volume name; the number is the position."""
    m = _SLICE.search(image_id)
    if m:
        return (str(volume_id) if volume_id else image_id[:m.start()]) + f"#{m.group(1)}", int(m.group(2))
    stem = Path(image_id).with_suffix("").as_posix()
    t = _TRAILING.match(stem)
    return (t.group(1), int(t.group(2))) if t and t.group(1) else ("", 0)


def cohort_image_set(images: pd.DataFrame, pixels: np.ndarray) -> ImageSet:
    """An :class:`ImageSet` of a cohort's store rows (``images``) and their pixels."""
    out = ImageSet()
    for row, img in zip(images.itertuples(index=False), pixels):
        volume_id = row.volume_id if isinstance(row.volume_id, str) else None
        volume, position = _volume_and_position(row.image_id, volume_id)
        subject = subject_of(row.image_id, volume_id)
        out.add(np.asarray(img, np.float32), subject, f"{subject}|{volume}" if volume else "", position)
    return out


def _subset(images: ImageSet, keep: set[str]) -> ImageSet:
    out = ImageSet()
    for img, s, v, p in zip(images.images, images.subjects, images.volumes, images.positions):
        if s in keep:
            out.add(img, s, v, p)
    return out


def _renamed_phantoms(n: int, seed: int, prefix: str, size: int) -> ImageSet:
    ph = phantoms(n, seed=seed, size=size) if n else ImageSet()
    ph.subjects = [f"{prefix}-{s}" for s in ph.subjects]
    ph.volumes = [f"{prefix}-{v}" for v in ph.volumes]
    return ph


@dataclass
class RetrainData:
    """The three image sets of one retraining run and what the split was (counts only)."""

    train: ImageSet
    val: ImageSet
    eval: ImageSet
    summary: dict


def retrain_data(cohort: ImageSet, config: RetrainConfig, size: int = 128) -> RetrainData:
    """Training, validation and the fixed evaluation image sets (see module docstring)."""
    train_subjects, held = split_holdout(cohort.subjects, config.holdout_fraction)
    train = _subset(cohort, set(train_subjects)).extend(
        _renamed_phantoms(config.train_phantom_volumes, config.seed + 101, "train", size))
    val = _renamed_phantoms(max(2, config.val_phantom_volumes), config.seed + 202, "val", size)
    ev = _subset(cohort, set(held)).extend(
        _renamed_phantoms(max(2, config.eval_phantom_volumes), EVAL_PHANTOM_SEED, "eval", size))
    summary = {"cohort_images": len(cohort), "cohort_subjects": len(set(cohort.subjects)),
               "train_subjects": len(train_subjects), "heldout_subjects": len(held),
               "train_images": len(train), "val_images": len(val), "eval_images": len(ev),
               "eval_cohort_images": len(ev) - _phantom_count(ev),
               "subject_rule": "first path component of image_id (else the volume / the file)",
               "holdout": f"sha256('deepssim-holdout:'+subject) < {config.holdout_fraction}",
               "eval_phantom_seed": EVAL_PHANTOM_SEED, "eval_pair_seed": EVAL_PAIR_SEED}
    return RetrainData(train, val, ev, summary)


def _phantom_count(images: ImageSet) -> int:
    return sum(s.startswith("eval-phantom") for s in images.subjects)


# --------------------------------------------------------------------------- evaluation

def fixed_eval_set(eval_images: ImageSet, n_pairs: int):
    """The reproducible :class:`~deepssim.metric.train.EvalSet` both models are scored on."""
    from deepssim.metric.train import make_eval_set
    from deepssim.metric.trainingdata import as_pool

    return make_eval_set(as_pool(eval_images), n_pairs, seed=EVAL_PAIR_SEED)


def build_eval_benchmark(eval_images: ImageSet, out: Path, per_kind: int) -> Path:
    """A memorization benchmark (:func:`deepssim.evaluation.benchmark.build_benchmark`) from the
    evaluation images.  Subjects are written under anonymous folder names."""
    from PIL import Image

    from deepssim.evaluation.benchmark import build_benchmark

    src = out / "src"
    names = {s: f"s{i:03d}" for i, s in enumerate(sorted(set(eval_images.subjects)))}
    for k, (img, subject) in enumerate(zip(eval_images.images, eval_images.subjects)):
        folder = src / names[subject]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(folder / f"{k:05d}.png")
    bench = out / "bench"
    build_benchmark(src, bench, seed=BENCHMARK_SEED, max_per_subject=6, n_duplicates=per_kind,
                    n_similar=per_kind, n_different=per_kind)
    return bench


def benchmark_scores(model, bench_dir: Path, device: str = "cpu") -> dict:
    """Macro F1 and duplicate recall of the DeepSSIM score (embedding top-1, default
    thresholds) on a built benchmark, with an in-memory model."""
    from deepssim.evaluation.benchmark import evaluate as bench_evaluate
    from deepssim.evaluation.benchmark import load_benchmark, method_deepssim
    from deepssim.config import Thresholds
    from deepssim.metric.embed import Embedder

    data = load_benchmark(bench_dir)
    embedder = Embedder(model, device=device)
    data._cache["emb"] = (embedder.embed(data.train), embedder.embed(data.candidates))
    scores, _ = method_deepssim(data)
    labels = np.array([t["label"] for t in data.truth])
    result = bench_evaluate(np.asarray(scores, np.float64), labels, Thresholds())
    return {"macro_f1": result["macro_f1"], "duplicate_recall": result["per_class"]["duplicate"]["recall"],
            "candidates": int(len(labels))}


def evaluate_model(model, ev, bench_dir: Path | None = None, device: str = "cpu") -> dict:
    """Fixed-pair metrics (+ ``benchmark`` when a benchmark folder is given)."""
    from deepssim.metric.train import evaluate

    model = model.to("cpu").eval()
    metrics = evaluate(model, ev)
    metrics["criterion"] = criterion(metrics)
    if bench_dir is not None:
        metrics["benchmark"] = benchmark_scores(model, bench_dir, device)
    return metrics


def decide(champion: dict, challenger: dict, rule: PromotionRule = PromotionRule()) -> tuple[bool, str]:
    """``(promote, reason)`` under ``rule``; the reason quotes the numbers compared."""
    c_old, c_new = champion["criterion"], challenger["criterion"]
    reasons = []
    if c_new > c_old - rule.min_improvement:
        reasons.append(f"criterion {c_new:.4f} does not beat the champion's {c_old:.4f} "
                       f"by {rule.min_improvement}")
    d_old, d_new = champion.get("different_rate_le_0.60"), challenger.get("different_rate_le_0.60")
    if d_old is not None and d_new is not None and d_new < d_old - rule.max_different_rate_drop:
        reasons.append(f"dissimilar pairs below 0.60 fell from {d_old:.3f} to {d_new:.3f}")
    f_old = (champion.get("benchmark") or {}).get("macro_f1")
    f_new = (challenger.get("benchmark") or {}).get("macro_f1")
    if f_old is not None and f_new is not None and f_new < f_old - rule.max_f1_drop:
        reasons.append(f"benchmark macro F1 fell from {f_old:.3f} to {f_new:.3f}")
    if reasons:
        return False, "kept champion: " + "; ".join(reasons)
    bench = f", benchmark macro F1 {f_old:.3f} -> {f_new:.3f}" if f_new is not None else ""
    return True, (f"promoted: criterion {c_old:.4f} -> {c_new:.4f} (mae_augmented "
                  f"{champion['mae_augmented']:.4f} -> {challenger['mae_augmented']:.4f}, copy rate "
                  f"{champion['copy_rate_gt_0.85']:.3f} -> {challenger['copy_rate_gt_0.85']:.3f}){bench}")


def scratch() -> tempfile.TemporaryDirectory:
    """A private folder for benchmark images (deleted by the caller's ``with``)."""
    return tempfile.TemporaryDirectory(prefix="deepssim-retrain-")
