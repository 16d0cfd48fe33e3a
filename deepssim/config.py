"""Typed settings for every part of the gate.

Every object here is a frozen dataclass so that a run's full configuration can be
recorded (``asdict``) in the store, ``summary.json`` and the report.  Nothing in the
library hard-codes a threshold: callers pass these objects in.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


PRECISIONS = ("auto", "float32", "bfloat16")  # of embedding arithmetic (deepssim/metric/embed.py)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of the DeepSSIM encoder (a 2D MONAI ResNet with a stride-2 stem).

    ``input_size`` is the side of the square, single-channel image the network sees;
    ``embedding_dim`` the length of the L2-normalised embedding.  ``canonical_flips``:
    flip each image into a canonical orientation before the network
    (:func:`deepssim.metric.model.canonical_flips`), which makes the embedding exactly invariant
    to horizontal and vertical flips.  Off for checkpoints that predate it.
    """

    input_size: int = 128
    embedding_dim: int = 256
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    stem_stride: int = 2
    canonical_flips: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


@dataclass(frozen=True)
class Thresholds:
    """Score cut-offs: ``score > duplicate`` is a duplicate, ``similar < score <= duplicate``
    is similar, anything else is different.  ``source`` records where they came from."""

    similar: float = 0.60
    duplicate: float = 0.85
    source: str = "default (DeepSSIM reference)"

    def __post_init__(self) -> None:
        if not (-1.0 <= self.similar < self.duplicate <= 1.0):
            raise ValueError(
                f"thresholds must satisfy -1 <= similar < duplicate <= 1, got "
                f"similar={self.similar}, duplicate={self.duplicate}"
            )


@dataclass(frozen=True)
class GatePolicy:
    """When the gate fails.

    The default fails as soon as one candidate is a duplicate and only reports similar
    ones.  ``max_similar_fraction`` (0–1) additionally fails when too many candidates are
    similar; ``fail_on_volume_duplicate`` makes a volume fail as a whole when any of its
    slices is a duplicate (volume rows are always reported).  ``fail_on_quarantined``
    fails closed when any candidate file could not be audited: an unreadable file in a
    release is an unaudited file (it may be readable by someone else's software).
    """

    max_duplicates: int = 0
    max_similar_fraction: float | None = None
    fail_on_volume_duplicate: bool = True
    fail_on_quarantined: bool = True

    def __post_init__(self) -> None:
        if self.max_duplicates < 0:
            raise ValueError("max_duplicates must be >= 0")
        if self.max_similar_fraction is not None and not 0.0 <= self.max_similar_fraction <= 1.0:
            raise ValueError("max_similar_fraction must lie in [0, 1]")


@dataclass(frozen=True)
class VerificationConfig:
    """Exact-SSIM verification of the nearest training images after an alignment search.

    Only candidates whose embedding score exceeds ``floor`` are verified, against their
    ``top_k`` nearest training images and any further neighbour whose embedding score is
    within ``margin`` of the candidate's best, ``max_k`` images at most: the embedding
    over-scores other slices of one series, so a copy's source can rank well below slices
    that look alike (BENCHMARKS.md, "Verification").  All of them are searched in one batch
    at coarse resolution, and only the few that align best are refined and scored, so 30
    cost little more than 15 (:func:`deepssim.audit.verify.verify_candidate`; in a 10,000-slice
    cohort of look-alike reslicings 30 instead of 15 found 92 instead of 86 of 100 copies
    for 24 % more time, BENCHMARKS.md).
    ``compare_size``: side (px) at which the alignment is searched; ``refine_steps`` /
    ``full_refine_steps``: Gauss–Newton iterations of the rotation/zoom/shift refinement
    there (and at the coarse grid's side) and at full resolution on the search images (0: none — the last
    refinement is at full resolution already; on the held-out benchmarks this one only
    raised the scores of non-copies, replaced patches pulled it off, and it cost 13 % of
    the time, BENCHMARKS.md); ``photometric_refine_steps``: iterations
    of the last refinement, on the photometrically matched images; ``terms``: which SSIM
    terms are averaged ("ssim" the full reference formula, as the labels are defined;
    "cs" contrast × structure or "s" structure only are more lenient: a blend with another
    image mostly shows in the luminance term); ``smoothing``: common Gaussian smoothing
    (px) of both images before SSIM (0: none — smoothing both raised every non-copy's
    score); ``blur_sigmas``: blur levels (px) tried on the training image, the copy may be
    smoother than its source; ``discount_common_blur``: the blur levels' scores are
    extrapolated to no blur shared by the two images (a shared blur raises the SSIM of any
    two images that are not copies and leaves a copy's unchanged; on the held-out benchmarks
    the bias of elastic edits fell from +0.067 to +0.052, of neighbouring slices from +0.049
    to +0.036, macro F1 rose from 0.906 / 0.884 to 0.931 / 0.898, copies did not move —
    BENCHMARKS.md, "Verification (session 11)"); ``grid_factors``: coarser grids (1/f of the side) a training
    image is resampled through, like a generator working at its own resolution makes its
    samples, tried only when the candidate keeps at most ``band_limit_ratio`` of the detail
    such a grid removes from its references (the gate measures the candidate's resolution,
    it is never told it); ``fusion``: how the verification score and the
    embedding score make the final score ("max" | "verification", see
    ``deepssim.audit.pipeline.fuse_scores``).  ``workers``: processes verifying candidates side
    by side (0: one per CPU core, at most 8; 1: in the calling process), see
    :mod:`deepssim.audit.parallel`; ``device``: where the verification computes ("cpu", "cuda" or
    "auto": CUDA where present) — on a GPU, candidates are verified in the calling process
    (one after another, each batched on the device).  See :mod:`deepssim.audit.verify` for the
    score.
    """

    enabled: bool = True
    floor: float = 0.45
    top_k: int = 30
    margin: float = 0.05
    max_k: int = 30
    rotation_degrees: tuple[float, ...] = (-12.0, -8.0, -4.0, 0.0, 4.0, 8.0, 12.0)
    compare_size: int = 64
    refine_steps: int = 4
    full_refine_steps: int = 0
    photometric_refine_steps: int = 3
    terms: str = "ssim"
    smoothing: float = 0.0
    blur_sigmas: tuple[float, ...] = (0.0, 0.5, 0.8, 1.1, 1.5)
    discount_common_blur: bool = True
    # a generator's grid, as a fraction of the image side: tried only on candidates that are
    # band-limited to it (deepssim.audit.verify._band_limited_factors); () turns it off
    grid_factors: tuple[float, ...] = (2.0, 3.0, 4.0)
    band_limit_ratio: float = 0.4
    # the verified score alone found every planted duplicate of the held-out benchmarks
    # (BENCHMARKS.md, "Detection quality"); "max" with the embedding score only added
    # similar images called duplicates
    fusion: str = "verification"
    workers: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"verification device must be auto, cpu or cuda, got {self.device!r}")
        if self.workers < 0:
            raise ValueError(f"verification workers must be >= 0 (0: one per core), got {self.workers}")
        if self.top_k < 1 or self.max_k < self.top_k or self.margin < 0:
            raise ValueError(f"verification needs 1 <= top_k <= max_k and margin >= 0, got top_k={self.top_k}, "
                             f"max_k={self.max_k}, margin={self.margin}")

    def neighbours_to_verify(self, emb_scores) -> int:
        """How many of a candidate's neighbours (a sequence of embedding scores, best first)
        to verify."""
        crowded = sum(1 for s in emb_scores if s >= emb_scores[0] - self.margin) if len(emb_scores) else 0
        return min(len(emb_scores), max(self.top_k, min(crowded, self.max_k)))


@dataclass(frozen=True)
class SearchConfig:
    """Exact cosine top-k search: ``k`` neighbours, blocks of candidates × cohort rows.
    Verification checks some of them (``VerificationConfig.top_k`` … ``max_k``), so ``k``
    caps how far down the ranking a copy's source may sit and still be found."""

    k: int = 30
    candidate_block: int = 4096
    cohort_block: int = 65536


@dataclass(frozen=True)
class IngestConfig:
    """How files become 2D model inputs."""

    slice_axis: int = 2
    foreground_threshold: float = 0.10
    min_foreground_2d: float = 0.01
    min_side: int = 16
    max_pixels: int = 512 * 1024 * 1024
    max_file_bytes: int = 2 * 1024**3
    volume_index: int | None = None
    follow_external_symlinks: bool = False
    percentile_window: tuple[float, float] = (0.5, 99.5)
    ct_window: tuple[float, float] = (-1000.0, 1000.0)


@dataclass(frozen=True)
class AuditSettings:
    """Everything an audit depends on, recorded verbatim in its outputs."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    policy: GatePolicy = field(default_factory=GatePolicy)
    search: SearchConfig = field(default_factory=SearchConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    batch_size: int = 256
    device: str = "auto"
    # "auto": bfloat16 where the hardware computes it natively (CUDA, AVX512-BF16/AMX CPUs),
    # else float32; scores move by <= 0.005 (deepssim/metric/embed.py)
    precision: str = "auto"
    evidence_pairs: int = 12
    store_wait_s: float = 60.0

    def __post_init__(self) -> None:
        check_precision(self.precision)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any] | None) -> "AuditSettings":
        """Inverse of :meth:`as_record`; missing keys keep their defaults, unknown keys
        are an error (a typo in a deployment's parameters must not pass silently)."""
        return from_dict(cls, data or {})


def from_dict(cls, data: dict[str, Any]):
    """Build dataclass ``cls`` from a plain dict (nested dataclasses from nested dicts,
    lists as tuples); unknown keys are an error."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
    defaults = cls()
    values = {}
    for name, value in data.items():
        default = getattr(defaults, name)
        if hasattr(default, "__dataclass_fields__") and isinstance(value, dict):
            value = from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def deepssim_home() -> Path:
    """``$DEEPSSIM_HOME``, or ``~/.deepssim`` when unset."""
    return Path(os.environ.get("DEEPSSIM_HOME", Path.home() / ".deepssim")).expanduser()


def default_db_path() -> Path:
    return deepssim_home() / "deepssim.duckdb"
