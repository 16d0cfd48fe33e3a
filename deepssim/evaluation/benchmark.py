"""Memorization benchmarks in the DeepSSIM paper's protocol, and running methods on them.

:func:`build_benchmark` turns a folder of real images into a benchmark::

    out/train/<subject>/<image>.png     the "training cohort" (members)
    out/candidates/<16 hex>.png         candidates; names give nothing away
    out/truth.csv                       candidate, source, kind, ssim, label, nearest_train
    out/benchmark.json                  seed, split, counts

Subjects are split disjointly into members and non-members.  Candidates are

* ``duplicate`` — a member image under nuisance transforms only
  (:func:`deepssim.metric.augment.nuisance_augment`: flips/turns, rotation, translation, zoom,
  gamma, bias field, blur, noise).  Its aligned reference SSIM is 1 by definition (the
  unaugmented copy *is* the source);
* ``similar`` — a member image under a structural edit (elastic, blend with a non-member
  image, or patch replacement) whose strength is bisected so that the aligned reference
  SSIM to the source lands in (0.60, 0.85], then the same nuisance transforms;
* ``different`` — a non-member image under nuisance transforms; its ``ssim`` is the best
  aligned reference SSIM against every member image;
* ``neighbour`` (only when ``n_neighbours`` > 0) — a slice of a *member* subject that was
  left out of the training cohort, preferably within :data:`NEIGHBOUR_REACH` slices of a
  registered slice of the same subject (what a generator interpolating between a patient's
  slices makes), under the same nuisance transforms; its ``ssim`` is the best aligned
  reference SSIM against every member image (often *similar*, sometimes *duplicate* or
  *different*).

``label`` is the class that :class:`~deepssim.config.Thresholds` implies for ``ssim``
(the planted ``kind`` is kept beside it; evaluation uses ``label``).  Everything is
drawn from ``seed``; the neighbour kind from a generator of its own, so that a benchmark
built without it is byte-identical to one built before it existed.

:func:`run_benchmark` scores the candidates with several methods (a dict of callables,
:data:`METHODS`) and reports macro F1 and more; see its docstring.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from deepssim.config import Thresholds, VerificationConfig
from deepssim.preprocess import to_model_input
from deepssim.metric.ssim import reference_ssim, ssim_torch

KINDS = ("duplicate", "similar", "different")  # the labels (and the original planted kinds)
CANDIDATE_KINDS = KINDS + ("neighbour",)  # every ``kind`` a truth row may carry
PLANTED_KINDS = ("duplicate", "similar", "neighbour")  # kinds whose ``nearest_train`` is their source
NEIGHBOUR_REACH = 2  # slices: a left-out slice this close to a registered one is "adjacent"
SIMILAR_TARGET = (0.63, 0.82)


# --------------------------------------------------------------------------- reading

def _read_png(path: Path, size: int) -> list[np.ndarray]:
    from PIL import Image

    return [to_model_input(np.asarray(Image.open(path).convert("L")), size, window=(0, 255))]


def _read_npy(path: Path, size: int) -> list[np.ndarray]:
    arr = np.load(path)
    stack = arr[None] if arr.ndim == 2 else arr
    return [to_model_input(s, size) for s in stack if np.nanstd(s) > 0]


READERS: dict[str, Callable[[Path, int], list[np.ndarray]]] = {".png": _read_png, ".npy": _read_npy}


@dataclass
class SourceImages:
    """Real images (N, S, S) float32 in [0, 1]; ``names`` are ``subject/file[#i]``."""

    images: np.ndarray
    subjects: np.ndarray
    names: list[str]


def discover(src: str | Path, size: int = 128, subjects: set[str] | None = None) -> SourceImages:
    """Every PNG/NPY under ``src``; an image's subject is the name of its parent folder
    (so ``src/<subject>/*.png`` and ``slices/<group>/<subject>/*.png`` both work).  A 3D
    NPY contributes one image per slice along axis 0.  Symlinked folders are followed.
    ``subjects`` keeps only those."""
    src = Path(src)
    images, subs, names = [], [], []
    files = [Path(d) / f for d, _, fs in os.walk(src, followlinks=True) for f in fs]
    for path in sorted(p for p in files if p.suffix.lower() in READERS):
        subject = path.parent.name
        if subjects is not None and subject not in subjects:
            continue
        for i, img in enumerate(READERS[path.suffix.lower()](path, size)):
            images.append(img)
            subs.append(subject)
            names.append(f"{subject}/{path.stem}" + (f"#{i}" if path.suffix.lower() == ".npy" else ""))
    if not images:
        raise ValueError(f"no PNG/NPY images found under {src}")
    return SourceImages(np.stack(images).astype(np.float32), np.array(subs), names)


def _quantise(x: np.ndarray) -> np.ndarray:
    """What a uint8 PNG round trip leaves: float32 in [0, 1] on the 1/255 grid."""
    return (np.clip(x, 0, 1) * 255).round().astype(np.float32) / 255


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)


# --------------------------------------------------------------------------- building

def split_subjects(subjects: np.ndarray, train_fraction: float, rng: np.random.Generator
                   ) -> tuple[list[str], list[str]]:
    """Disjoint (members, non-members); each side gets at least one subject."""
    names = sorted(set(subjects.tolist()))
    if len(names) < 2:
        raise ValueError("a benchmark needs at least two subjects (members and non-members)")
    order = [names[i] for i in rng.permutation(len(names))]
    n_train = int(np.clip(round(train_fraction * len(names)), 1, len(names) - 1))
    return sorted(order[:n_train]), sorted(order[n_train:])


def _subsample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, limit, replace=False)) if len(rows) > limit else rows


def _edit(kind: str, x: torch.Tensor, other: torch.Tensor, strength: float, seed: int) -> torch.Tensor:
    """One structural edit of (1, 1, S, S) at ``strength`` in [0, 1], with fixed randomness."""
    from deepssim.metric.augment import blend_edit, elastic_edit, patch_edit

    gen = torch.Generator().manual_seed(seed)
    s = torch.tensor([strength], dtype=torch.float32)
    edits: dict[str, Callable[[], torch.Tensor]] = {
        "elastic": lambda: elastic_edit(x, 0.15 * s, gen),
        "blend": lambda: blend_edit(x, other, 0.9 * s),
        "patch": lambda: patch_edit(x, other, 0.9 * s, gen),
    }
    return edits[kind]().clamp(0, 1)


def similar_edit(source: np.ndarray, other: np.ndarray, kind: str, target: float, seed: int,
                 iterations: int = 12) -> tuple[np.ndarray, float]:
    """Bisect the strength of edit ``kind`` so that SSIM(edited, source) ≈ ``target``.
    Returns the edited (S, S) image (PNG-quantised) and its reference SSIM to ``source``."""
    x = torch.from_numpy(source)[None, None]
    o = torch.from_numpy(other)[None, None]
    lo, hi = 0.0, 1.0
    best = (source, 1.0)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        edited = _quantise(_edit(kind, x, o, mid, seed)[0, 0].numpy())
        score = reference_ssim(edited, source)
        if abs(score - target) < abs(best[1] - target):
            best = (edited, score)
        lo, hi = (mid, hi) if score > target else (lo, mid)
    return best


def _nuisance(images: np.ndarray, seed: int, strength: float) -> np.ndarray:
    from deepssim.metric.augment import nuisance_augment

    gen = torch.Generator().manual_seed(seed)
    out = nuisance_augment(strength)(torch.from_numpy(images).unsqueeze(1), gen)[:, 0].numpy()
    return _quantise(out)


def best_ssim(candidates: np.ndarray, references: np.ndarray, block: int = 4096
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive aligned reference SSIM (the torch port, equal to scikit-image to 1e-5)
    of each candidate (N, S, S) against every reference (T, S, S).
    Returns best scores (N,) and the index of the best reference (N,)."""
    n, t = len(candidates), len(references)
    refs = torch.from_numpy(np.ascontiguousarray(references))
    best_s, best_i = np.full(n, -np.inf), np.zeros(n, dtype=int)
    for q in range(n):
        cand = torch.from_numpy(np.ascontiguousarray(candidates[q]))
        for start in range(0, t, block):
            chunk = refs[start:start + block]
            s = ssim_torch(cand.expand_as(chunk), chunk).numpy()
            j = int(s.argmax())
            if s[j] > best_s[q]:
                best_s[q], best_i[q] = float(s[j]), start + j
    return best_s, best_i


def _label(score: float, thresholds: Thresholds) -> str:
    if score > thresholds.duplicate:
        return "duplicate"
    return "similar" if score > thresholds.similar else "different"


def build_benchmark(src: str | Path, out: str | Path, seed: int = 0, size: int = 128,
                    train_fraction: float = 0.5, max_per_subject: int = 12, n_duplicates: int = 30,
                    n_similar: int = 30, n_different: int = 30, nuisance_strength: float = 1.0,
                    subjects: set[str] | None = None, thresholds: Thresholds = Thresholds(),
                    n_neighbours: int = 0) -> dict:
    """Build a benchmark from the real images under ``src`` (see the module docstring).

    Args:
        src: folder of ``<subject>/`` sub-folders of PNG/NPY (any depth).
        out: output folder (created; existing files of the same names are overwritten).
        seed: everything random is drawn from it: same seed, same benchmark.
        max_per_subject: member/non-member images kept per subject.
        n_duplicates, n_similar, n_different: candidates of each kind (``n_different`` is
            capped by the non-member images available).
        n_neighbours: left-out slices of member subjects (kind ``neighbour``), capped by the
            left-out slices available; 0 (the default) builds exactly what a build without
            the kind builds.
    Returns:
        The summary written to ``out/benchmark.json``.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    data = discover(src, size, subjects)
    members, non_members = split_subjects(data.subjects, train_fraction, rng)
    train_rows = np.concatenate([_subsample(np.flatnonzero(data.subjects == s), max_per_subject, rng)
                                 for s in members])
    other_rows = np.concatenate([_subsample(np.flatnonzero(data.subjects == s), max_per_subject, rng)
                                 for s in non_members])
    train = _quantise(data.images[train_rows])
    train_files = [f"train/{data.names[r]}.png" for r in train_rows]
    for f, img in zip(train_files, train):
        _write_png(out / f, img)

    rows = _plan_candidates(rng, len(train), other_rows, n_duplicates, n_similar, n_different)
    images, truth = _make_candidates(rows, train, train_files, data, rng, seed, nuisance_strength)
    adjacent = 0
    if n_neighbours > 0:
        # Own generator and nuisance seed: the main ``rng``'s draws and the other kinds'
        # nuisances stay exactly what they are without neighbours.
        picked, adjacent = _neighbour_rows(data, members, train_rows, n_neighbours,
                                           np.random.default_rng([seed, 1]))
        if len(picked):
            extra, extra_truth = _make_neighbours(picked, train, train_files, data)
            images = np.concatenate([images, _nuisance(extra, seed * 7919 + 17, nuisance_strength)])
            truth += extra_truth
    _finish_truth(truth, thresholds)
    order = rng.permutation(len(images))
    names = _unique_hex(rng, len(images))
    with open(out / "truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["candidate", "source", "kind", "ssim", "label",
                                               "nearest_train"])
        writer.writeheader()
        for name, i in zip(names, order):
            _write_png(out / "candidates" / f"{name}.png", images[i])
            writer.writerow({"candidate": f"candidates/{name}.png", **truth[i]})
    summary = {"seed": seed, "source": str(src), "members": members, "non_members": non_members,
               "train_images": len(train),
               "counts": {k: sum(t["kind"] == k for t in truth) for k in CANDIDATE_KINDS},
               "labels": {k: sum(t["label"] == k for t in truth) for k in KINDS},
               "neighbours_adjacent": adjacent,
               "thresholds": {"similar": thresholds.similar, "duplicate": thresholds.duplicate}}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    return summary


def _plan_candidates(rng, n_train: int, other_rows: np.ndarray, n_dup: int, n_sim: int, n_diff: int
                     ) -> dict[str, np.ndarray]:
    """Which member (or non-member) image each candidate of each kind comes from."""
    return {"duplicate": rng.choice(n_train, n_dup, replace=n_dup > n_train),
            "similar": rng.choice(n_train, n_sim, replace=n_sim > n_train),
            "different": rng.choice(other_rows, min(n_diff, len(other_rows)), replace=False)}


def _make_candidates(rows: dict[str, np.ndarray], train: np.ndarray, train_files: list[str],
                     data: SourceImages, rng, seed: int, strength: float
                     ) -> tuple[np.ndarray, list[dict]]:
    """Candidate images (N, S, S) and their partial truth rows, in kind order."""
    edits = ("elastic", "blend", "patch")
    clean, truth = [], []
    for i in rows["duplicate"]:
        clean.append(train[i])
        truth.append({"source": train_files[i], "kind": "duplicate", "ssim": 1.0,
                      "nearest_train": train_files[i]})
    others = _quantise(data.images[rows["different"]]) if len(rows["different"]) else train
    for n, i in enumerate(rows["similar"]):
        kind = edits[n % len(edits)]
        target = float(rng.uniform(*SIMILAR_TARGET))
        other = others[rng.integers(len(others))]
        edited, score = similar_edit(train[i], other, kind, target, seed * 100003 + n)
        clean.append(edited)
        truth.append({"source": f"{train_files[i]} ({kind})", "kind": "similar", "ssim": score,
                      "nearest_train": train_files[i]})
    if len(rows["different"]):
        scores, nearest = best_ssim(others, train)
        for r, score, j in zip(rows["different"], scores, nearest):
            truth.append({"source": f"non-member {data.names[r]}", "kind": "different",
                          "ssim": float(score), "nearest_train": train_files[j]})
        clean.extend(others)
    return _nuisance(np.stack(clean), seed, strength), truth


def _neighbour_rows(data: SourceImages, members: list[str], train_rows: np.ndarray, n: int, rng
                    ) -> tuple[np.ndarray, int]:
    """Rows of ``data`` for up to ``n`` neighbour candidates: slices of member subjects that
    are not in ``train_rows``.  A subject's slices are in slice order when sorted by name
    (the order :func:`discover` gives), so a slice's position among its subject's rows is
    its slice index (a subject folder holding several series counts as one run of slices).
    Slices within :data:`NEIGHBOUR_REACH` of a registered slice of their subject come
    first, in random order; the rest fill up if those are too few.
    Returns (rows (k,), how many of them are adjacent), k = min(n, left-out slices)."""
    adjacent, remote = [], []
    registered = np.asarray(train_rows)
    for subject in members:
        rows = np.flatnonzero(data.subjects == subject)
        kept = np.flatnonzero(np.isin(rows, registered))  # slice indices of registered slices
        for index in np.flatnonzero(~np.isin(rows, registered)):
            near = kept.size > 0 and np.abs(kept - index).min() <= NEIGHBOUR_REACH
            (adjacent if near else remote).append(rows[index])
    order = np.concatenate([rng.permutation(np.asarray(adjacent, dtype=int)),
                            rng.permutation(np.asarray(remote, dtype=int))])[:n]
    return order.astype(int), min(len(adjacent), n)


def _make_neighbours(rows: np.ndarray, train: np.ndarray, train_files: list[str], data: SourceImages
                     ) -> tuple[np.ndarray, list[dict]]:
    """Clean (k, S, S) neighbour images (PNG-quantised, like every image of the benchmark)
    and their partial truth rows.  The source images are aligned slices of one volume, so
    the plain reference SSIM to the nearest registered slice is the aligned one."""
    clean = _quantise(data.images[rows])
    scores, nearest = best_ssim(clean, train)
    truth = [{"source": f"neighbour {data.names[r]}", "kind": "neighbour", "ssim": float(score),
              "nearest_train": train_files[j]} for r, score, j in zip(rows, scores, nearest)]
    return clean, truth


def _finish_truth(truth: list[dict], thresholds: Thresholds) -> None:
    """Add the label the thresholds imply for each candidate's aligned SSIM."""
    for t in truth:
        t["label"] = _label(float(t["ssim"]), thresholds)


def _unique_hex(rng, n: int) -> list[str]:
    names: set[str] = set()
    out = []
    while len(out) < n:
        name = rng.bytes(8).hex()
        if name not in names:
            names.add(name)
            out.append(name)
    return out


# --------------------------------------------------------------------------- running

@dataclass
class BenchData:
    """A built benchmark in memory: members (T, S, S), candidates (N, S, S) in [0, 1],
    truth rows, and what methods need (checkpoint, verification settings)."""

    train: np.ndarray
    train_files: list[str]
    candidates: np.ndarray
    truth: list[dict]
    checkpoint: str | Path | None = None
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    device: str = "cpu"
    _cache: dict = field(default_factory=dict)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, D), (N, D) DeepSSIM embeddings, computed once."""
        if "emb" not in self._cache:
            from deepssim.metric.checkpoint import DEFAULT_MODEL, load_checkpoint
            from deepssim.metric.embed import Embedder

            model, _ = load_checkpoint(self.checkpoint or DEFAULT_MODEL, device="cpu")
            embedder = Embedder(model, device=self.device)
            self._cache["emb"] = (embedder.embed(self.train), embedder.embed(self.candidates))
        return self._cache["emb"]


def load_benchmark(bench_dir: str | Path) -> BenchData:
    """Read ``train/``, ``candidates/`` and ``truth.csv`` of a built benchmark."""
    from PIL import Image

    bench_dir = Path(bench_dir)
    read = lambda p: np.asarray(Image.open(bench_dir / p).convert("L"), np.float32) / 255  # noqa: E731
    train_files = sorted(p.relative_to(bench_dir).as_posix() for p in (bench_dir / "train").rglob("*.png"))
    with open(bench_dir / "truth.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    return BenchData(train=np.stack([read(p) for p in train_files]), train_files=train_files,
                     candidates=np.stack([read(t["candidate"]) for t in truth]), truth=truth)


MethodResult = tuple[np.ndarray, np.ndarray]  # best score (N,), index of the best member (N,)


def method_deepssim(data: BenchData) -> MethodResult:
    """Cosine of DeepSSIM embeddings, exact top-1."""
    from deepssim.store.search import topk_cosine

    train_emb, cand_emb = data.embeddings()
    scores, idx = topk_cosine(cand_emb, train_emb, 1)
    return scores[:, 0], idx[:, 0]


def _verified_topk(data: BenchData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Embedding top-k (scores, indices) and verification of each candidate against them,
    exactly as the audit does it (:func:`deepssim.audit.pipeline.verify_neighbours`); cached."""
    if "verified" not in data._cache:
        from deepssim.audit.pipeline import verify_neighbours
        from deepssim.store.search import topk_cosine

        train_emb, cand_emb = data.embeddings()
        emb_s, idx = topk_cosine(cand_emb, train_emb, data.verification.max_k)
        emb_s, idx = np.asarray(emb_s, np.float64), np.asarray(idx)
        result = verify_neighbours(data.candidates, emb_s, idx, lambda rows: data.train[rows],
                                   data.verification)
        data._cache["verified"] = (emb_s, idx, result)
    return data._cache["verified"]


def method_deepssim_verify(data: BenchData) -> MethodResult:
    """The audit's decision: top-k by embedding, then :func:`deepssim.audit.pipeline.verify_neighbours`
    (verification score of the best of the top-k, fused with the embedding score as
    ``VerificationConfig.fusion`` says); candidates under ``verification.floor`` keep the
    embedding score."""
    _, _, result = _verified_topk(data)
    return result.score, result.nearest


def method_max_fusion(data: BenchData) -> MethodResult:
    """The verified score fused with the embedding score by ``max`` (the stronger piece of
    evidence wins; the audit's default before verification alone reached full duplicate
    recall — kept to show what the learned score adds or costs)."""
    from deepssim.audit.pipeline import fuse_scores

    emb_s, _, result = _verified_topk(data)
    fused = np.where(result.verified, fuse_scores(emb_s[:, 0], result.verification_score, "max"), emb_s[:, 0])
    return fused, result.nearest


def method_raw_ssim(data: BenchData) -> MethodResult:
    """Exhaustive reference SSIM against every member, no alignment."""
    return best_ssim(data.candidates, data.train)


def method_pixel_correlation(data: BenchData) -> MethodResult:
    """Best Pearson correlation of raw pixels against every member."""
    def unit(x):
        x = x.reshape(len(x), -1).astype(np.float64)
        x = x - x.mean(1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    corr = unit(data.candidates) @ unit(data.train).T
    return corr.max(1), corr.argmax(1)


def method_verify_exhaustive(data: BenchData) -> MethodResult:
    """Verification against *every* member (no model: every member is searched, the
    close ones scored, see :func:`deepssim.audit.verify.verify_candidate`): an upper bound for
    what the embedding's top-k can hand to verification."""
    from deepssim.audit.verify import verify_candidates

    refs = np.broadcast_to(data.train, (len(data.candidates),) + data.train.shape)
    scores, _ = verify_candidates(data.candidates, refs, data.verification)
    return np.nanmax(scores, 1), np.nanargmax(scores, 1)


METHODS: dict[str, Callable[[BenchData], MethodResult]] = {
    "DeepSSIM": method_deepssim,
    "DeepSSIM + verification": method_deepssim_verify,
    "DeepSSIM + verification, max fusion": method_max_fusion,
    "raw SSIM (exhaustive)": method_raw_ssim,
    "pixel correlation": method_pixel_correlation,
    "verification (exhaustive, no model)": method_verify_exhaustive,
}
DEFAULT_METHODS = ("DeepSSIM", "DeepSSIM + verification", "DeepSSIM + verification, max fusion",
                   "raw SSIM (exhaustive)", "pixel correlation")


def recall_at_precision(scores: np.ndarray, positive: np.ndarray, min_precision: float = 0.95) -> float:
    """Highest recall of ``positive`` over score cut-offs whose precision >= ``min_precision``."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(positive.sum(), 1)
    ok = precision >= min_precision
    return float(recall[ok].max()) if ok.any() else 0.0


def tpr_at_fpr(scores: np.ndarray, positive: np.ndarray, max_fpr: float = 0.05) -> float:
    """Highest true-positive rate over cut-offs whose false-positive rate <= ``max_fpr``."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order]) / max(positive.sum(), 1)
    fp = np.cumsum(~positive[order]) / max((~positive).sum(), 1)
    ok = fp <= max_fpr
    return float(tp[ok].max()) if ok.any() else 0.0


def evaluate(scores: np.ndarray, truth_labels: np.ndarray, thresholds: Thresholds) -> dict:
    """Macro F1, per-class precision/recall (labels from ``thresholds``), duplicate recall
    at >= 95 % precision and TPR at 5 % FPR (duplicate vs rest)."""
    from deepssim.evaluation.scoring import LABELS, label_indices, macro_f1

    truth = np.array([LABELS.index(t) for t in truth_labels])
    pred = label_indices(scores, thresholds.similar, thresholds.duplicate)
    per_class = {}
    for c, name in enumerate(LABELS):
        tp = np.sum((pred == c) & (truth == c))
        per_class[name] = {"precision": float(tp / max(np.sum(pred == c), 1)),
                           "recall": float(tp / max(np.sum(truth == c), 1))}
    dup = truth == 2
    return {"macro_f1": macro_f1(truth, pred), "per_class": per_class,
            "dup_recall_at_p95": recall_at_precision(scores, dup, 0.95),
            "tpr_at_fpr5": tpr_at_fpr(scores, dup, 0.05)}


def run_benchmark(bench_dir: str | Path, checkpoint: str | Path | None = None,
                  methods: list[str] | None = None, out_dir: str | Path | None = None,
                  thresholds: Thresholds = Thresholds(),
                  verification: VerificationConfig = VerificationConfig(), device: str = "cpu") -> dict:
    """Score a built benchmark with each named method of :data:`METHODS`
    (default :data:`DEFAULT_METHODS`).

    Per method: ``macro_f1`` with ``thresholds`` (default 0.60 / 0.85), per-class
    precision/recall, ``dup_recall_at_p95``, ``tpr_at_fpr5``, ``seconds_per_candidate``
    (embedding included for DeepSSIM methods), ``source_hit`` (fraction of planted
    duplicates/similar/neighbours whose best match is their ``nearest_train``) and
    ``calibrated``: the thresholds :func:`deepssim.evaluation.scoring.calibrate_from_benchmark`
    picks on this same benchmark with their macro F1 (in-sample, optimistic: it shows the
    ranking quality of a score whose scale differs from the aligned SSIM, e.g. the
    verification score).
    Writes ``results.json``, ``results.md`` and ``results.png`` into ``out_dir`` if given.
    """
    from deepssim.evaluation.scoring import calibrate_from_benchmark

    data = load_benchmark(bench_dir)
    data.checkpoint, data.verification, data.device = checkpoint, verification, device
    labels = np.array([t["label"] for t in data.truth])
    results: dict = {"benchmark": str(bench_dir), "candidates": len(labels),
                     "train_images": len(data.train),
                     "thresholds": {"similar": thresholds.similar, "duplicate": thresholds.duplicate},
                     "methods": {}}
    for name in methods or DEFAULT_METHODS:
        start = time.perf_counter()
        scores, nearest = METHODS[name](data)
        seconds = time.perf_counter() - start
        row = evaluate(np.asarray(scores, np.float64), labels, thresholds)
        row["seconds_per_candidate"] = seconds / max(len(labels), 1)
        row["source_hit"] = _source_hit(data, nearest)
        try:
            cal = calibrate_from_benchmark(scores, labels, min_duplicate_recall=0.95)
            row["calibrated"] = {"similar": cal.similar, "duplicate": cal.duplicate,
                                 "macro_f1": evaluate(scores, labels, cal)["macro_f1"]}
        except ValueError:
            row["calibrated"] = None
        row["scores"] = [float(s) for s in scores]
        results["methods"][name] = row
    if out_dir is not None:
        write_outputs(results, labels, Path(out_dir))
    return results


def _source_hit(data: BenchData, nearest: np.ndarray) -> float:
    """Fraction of planted candidates (:data:`PLANTED_KINDS`) whose best match (index into
    ``data.train_files``) is their ``nearest_train``: the source of a duplicate or similar
    image, the nearest registered slice of a neighbour.  Non-members have no source."""
    planted = [(i, t["nearest_train"]) for i, t in enumerate(data.truth) if t["kind"] in PLANTED_KINDS]
    if not planted:
        return float("nan")
    return float(np.mean([data.train_files[nearest[i]] == src for i, src in planted]))


def markdown_table(results: dict) -> str:
    """One row per method."""
    head = ("| method | macro F1 | dup P / R | similar P / R | different P / R | dup R @ P≥0.95 "
            "| TPR @ 5% FPR | source hit | macro F1 (calibrated, in-sample) | s / candidate |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, r in results["methods"].items():
        pc = r["per_class"]
        pr = lambda c: f"{pc[c]['precision']:.2f} / {pc[c]['recall']:.2f}"  # noqa: E731
        cal = r["calibrated"]
        cal_s = f"{cal['macro_f1']:.3f} ({cal['similar']:.2f}, {cal['duplicate']:.2f})" if cal else "n/a"
        lines.append(f"| {name} | {r['macro_f1']:.3f} | {pr('duplicate')} | {pr('similar')} | "
                     f"{pr('different')} | {r['dup_recall_at_p95']:.2f} | {r['tpr_at_fpr5']:.2f} | "
                     f"{r['source_hit']:.2f} | {cal_s} | {r['seconds_per_candidate']:.4f} |")
    return head + "\n".join(lines) + "\n"


def write_outputs(results: dict, labels: np.ndarray, out_dir: Path) -> None:
    """``results.json``, ``results.md`` and ``results.png`` (score by true label per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(markdown_table(results))
    names = list(results["methods"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes[0], names):
        scores = np.array(results["methods"][name]["scores"])
        for x, label in enumerate(KINDS):
            sel = labels == label
            ax.scatter(x + rng.uniform(-0.2, 0.2, sel.sum()), scores[sel], s=8, alpha=0.7)
        for t in results["thresholds"].values():
            ax.axhline(t, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(KINDS)), KINDS)
        ax.set_title(f"{name}\nmacro F1 {results['methods'][name]['macro_f1']:.2f}", fontsize=9)
        ax.set_ylabel("score")
    fig.tight_layout()
    fig.savefig(out_dir / "results.png", dpi=110)
    plt.close(fig)
