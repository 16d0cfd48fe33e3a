"""The generator's training cohort: real slices, a few of them duplicated many times.

Diffusion models trained on small sets memorize, and memorize duplicated images first; the
case study plants that setting on purpose so that the gate has real memorized samples to
find.  Slices are taken every ``stride``-th slice of each subject (neighbouring slices look
alike), and ``duplication`` says how many images are repeated how often.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CohortImage:
    """One distinct training image: ``file`` relative to the data root, ``copies`` ≥ 1."""

    file: str
    subject: str
    copies: int
    sha256: str = ""


@dataclass(frozen=True)
class MemorizationCohort:
    """The distinct images of a generator's training set and how often each was repeated."""

    images: tuple[CohortImage, ...]

    def training_files(self) -> list[str]:
        """The training list as the generator saw it: each file ``copies`` times."""
        return [im.file for im in self.images for _ in range(im.copies)]

    def copies_of(self) -> dict[str, int]:
        return {im.file: im.copies for im in self.images}

    def to_rows(self) -> list[dict]:
        return [asdict(im) for im in self.images]

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "MemorizationCohort":
        return cls(tuple(CohortImage(**row) for row in rows))


def memorization_cohort(data_root: Path, subjects: list[str], duplication: dict[int, int],
                        duplicate_subjects: list[str], stride: int = 3, seed: int = 0
                        ) -> MemorizationCohort:
    """Pick the cohort from ``data_root/manifest.csv`` (the shared slice manifest).

    Every ``stride``-th slice of each subject in ``subjects`` (offset by the seed), then
    ``duplication[copies]`` images drawn from ``duplicate_subjects`` get ``copies`` copies.
    The files' SHA-256 is recorded so that a later run can check it reads the same pixels.
    """
    rows = list(csv.DictReader((Path(data_root) / "manifest.csv").open()))
    chosen = []
    for subject in subjects:
        files = sorted((r for r in rows if r["subject"] == subject), key=lambda r: int(r["slice_index"]))
        if not files:
            raise ValueError(f"subject {subject!r} is not in {data_root}/manifest.csv")
        chosen += [(r["file"], subject) for r in files[seed % stride::stride]]
    rng = np.random.default_rng(seed)
    pool = [i for i, (_, s) in enumerate(chosen) if s in duplicate_subjects]
    needed = sum(duplication.values())
    if needed > len(pool):
        raise ValueError(f"{needed} duplicated images asked for, {len(pool)} available")
    picks = rng.choice(pool, size=needed, replace=False)
    copies = {}
    start = 0
    for count, n_images in sorted(duplication.items()):
        copies.update({int(i): int(count) for i in picks[start:start + n_images]})
        start += n_images
    images = tuple(CohortImage(file, subject, copies.get(i, 1), _sha256(Path(data_root) / file))
                   for i, (file, subject) in enumerate(chosen))
    return MemorizationCohort(images)


def read_cohort_images(data_root: Path, cohort: MemorizationCohort, check: bool = True) -> np.ndarray:
    """The distinct images as float32 (N, H, W) in [0, 1], in ``cohort.images`` order.

    Raises ``ValueError`` naming the file when its bytes differ from the recorded hash (the
    generator was trained on other pixels than these).
    """
    out = []
    for im in cohort.images:
        path = Path(data_root) / im.file
        if check and im.sha256 and _sha256(path) != im.sha256:
            raise ValueError(f"{im.file}: contents differ from the generator's training data (sha256)")
        out.append(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)
    return np.stack(out)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
