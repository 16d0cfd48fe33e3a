"""Where training images come from, and the procedural phantoms that widen them.

Real slices (folders of PNGs with a manifest, NIfTI volumes, DICOM files) are read with
the ingestion readers; procedural CT-like phantoms and tiles of the real photographs and
micrographs that scikit-image ships add contrasts and structures that a small brain-MR
collection lacks.  Everything here returns plain numpy arrays of shape (N, S, S) in
[0, 1] plus per-image subject / volume / position labels, packed as an
:class:`~deepssim.metric.pairs.ImagePool` by :func:`as_pool`.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepssim.preprocess import to_model_input


@dataclass
class ImageSet:
    """Images (N, S, S) float32 in [0, 1] with labels; ``volume`` -1 marks a lone image."""

    images: list[np.ndarray] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def add(self, image: np.ndarray, subject: str, volume: str = "", position: int = 0) -> None:
        self.images.append(image.astype(np.float32))
        self.subjects.append(subject)
        self.volumes.append(volume)
        self.positions.append(position)

    def extend(self, other: "ImageSet") -> "ImageSet":
        self.images += other.images
        self.subjects += other.subjects
        self.volumes += other.volumes
        self.positions += other.positions
        return self

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> None:
        """Compact npz: images as uint8."""
        np.savez_compressed(path, images=(np.stack(self.images) * 255).round().astype(np.uint8),
                            subjects=np.array(self.subjects), volumes=np.array(self.volumes),
                            positions=np.array(self.positions))

    @classmethod
    def load(cls, path: str | Path) -> "ImageSet":
        d = np.load(path)
        imgs = d["images"].astype(np.float32) / 255.0
        return cls(list(imgs), d["subjects"].tolist(), d["volumes"].tolist(), d["positions"].tolist())


def as_pool(images: ImageSet, device: str = "cpu"):
    """Pack an :class:`ImageSet` into a sorted :class:`~deepssim.metric.pairs.ImagePool`."""
    import torch

    from deepssim.metric.pairs import ImagePool

    names = sorted(set(images.subjects))
    subject_index = {n: i for i, n in enumerate(names)}
    vol_names = sorted({v for v in images.volumes if v})
    vol_index = {v: i for i, v in enumerate(vol_names)}
    pool = ImagePool(
        images=torch.from_numpy(np.stack(images.images)).unsqueeze(1),
        subject=torch.tensor([subject_index[s] for s in images.subjects]),
        volume=torch.tensor([vol_index.get(v, -1) for v in images.volumes]),
        position=torch.tensor(images.positions),
        subject_names=names,
    )
    return pool.sorted().to(device)


def _trailing_number(stem: str) -> int:
    digits = re.search(r"(\d+)$", stem)
    return int(digits.group(1)) if digits else 0


def read_slice_folder(root: str | Path, manifest: str = "manifest.csv", size: int = 128,
                      exclude_licence: str = "GPL") -> ImageSet:
    """A folder of 2D slices described by a manifest with columns ``file, subject`` and
    optionally ``volume``/``source_id``, ``slice_index`` (else the file name's trailing
    number) and ``license`` (rows whose licence mentions ``exclude_licence`` are skipped:
    the shipped weights must not carry copyleft data)."""
    from PIL import Image

    root = Path(root)
    out = ImageSet()
    with open(root / manifest, newline="") as f:
        for row in csv.DictReader(f):
            if exclude_licence and exclude_licence in row.get("license", ""):
                continue
            img = np.asarray(Image.open(root / row["file"]).convert("L"))
            volume = f"{row['subject']}/{row.get('source_id', '')}/{row.get('volume', '0')}"
            position = int(row.get("slice_index") or _trailing_number(Path(row["file"]).stem))
            out.add(to_model_input(img, size, window=(0, 255)), row["subject"], volume, position)
    return out


def read_volume_all_axes(path: str | Path, subject: str, size: int = 128, stride: int = 2,
                         min_foreground: float = 0.1) -> ImageSet:
    """Slices of a NIfTI volume along all three axes (each axis its own stack), windowed
    per volume at the 0.5–99.5 percentiles, near-empty slices dropped."""
    import nibabel as nib

    vol = np.asarray(nib.as_closest_canonical(nib.load(str(path))).get_fdata(dtype=np.float32))
    lo, hi = np.percentile(vol[np.isfinite(vol)], (0.5, 99.5))
    out = ImageSet()
    for axis in range(3):
        for i in range(0, vol.shape[axis], stride):
            sl = np.take(vol, i, axis=axis)
            unit = np.clip((sl - lo) / (hi - lo), 0, 1)
            if (unit > 0.1).mean() < min_foreground:
                continue
            out.add(to_model_input(np.rot90(unit), size, window=(0, 1)), subject,
                    f"{subject}/axis{axis}", i)
    return out


# --------------------------------------------------------------------------- phantoms

def _ellipse(h: int, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:h].astype(np.float32) / h
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, h: int, scale: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal((h, h)).astype(np.float32), scale)


def ct_phantom_volume(rng: np.random.Generator, n_slices: int = 24, size: int = 128) -> np.ndarray:
    """A torso-like CT phantom stack (n_slices, size, size) in [0, 1]: body outline, fat
    rim, lungs, spine, ribs and organs whose shapes change smoothly from slice to slice."""
    from scipy.ndimage import gaussian_filter

    body_ry, body_rx = rng.uniform(0.28, 0.4), rng.uniform(0.38, 0.47)
    organs = [(rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.7), rng.uniform(0.04, 0.12),
               rng.uniform(0.04, 0.14), rng.uniform(0, np.pi), rng.uniform(0.45, 0.75))
              for _ in range(rng.integers(3, 7))]
    phase = rng.uniform(0, 2 * np.pi, 8)
    texture = _smooth_noise(rng, size, 2.0)
    stack = []
    for z in np.linspace(0, 1, n_slices):
        wob = lambda k: np.sin(2 * np.pi * z + phase[k])  # noqa: E731 - smooth per-slice drift
        img = np.zeros((size, size), np.float32)
        body = _ellipse(size, 0.5, 0.5, body_ry * (1 + 0.05 * wob(0)), body_rx * (1 + 0.04 * wob(1)))
        img[body] = 0.35
        inner = _ellipse(size, 0.5, 0.5, body_ry * 0.9, body_rx * 0.92)
        img[body & ~inner] = 0.28  # fat rim
        img[inner] = 0.5
        lung_r = 0.12 * (0.6 + 0.4 * wob(2))
        for side in (-1, 1):
            lung = _ellipse(size, 0.45, 0.5 + side * 0.17, lung_r * 1.4, lung_r, side * 0.2)
            img[lung & inner] = 0.05 + 0.04 * rng.random()
        for cy, cx, ry, rx, ang, val in organs:
            o = _ellipse(size, cy + 0.02 * wob(3), cx, ry * (1 + 0.3 * wob(4)), rx, ang)
            img[o & inner] = val
        spine = _ellipse(size, 0.5 + body_ry * 0.7, 0.5, 0.045, 0.05)
        img[spine] = 0.95
        img[_ellipse(size, 0.5 + body_ry * 0.7, 0.5, 0.025, 0.03)] = 0.7
        for k in range(6):
            ang = np.pi * (0.15 + 0.7 * k / 5) + 0.1 * wob(5)
            cy, cx = 0.5 + body_ry * 0.82 * np.sin(ang), 0.5 + body_rx * 0.85 * np.cos(ang)
            img[_ellipse(size, cy, cx, 0.015, 0.02)] = 0.9
        img = gaussian_filter(img, 0.7) + 0.015 * texture
        stack.append(np.clip(img + 0.01 * rng.standard_normal(img.shape), 0, 1))
    return np.stack(stack).astype(np.float32)


def blob_phantom_volume(rng: np.random.Generator, n_slices: int = 16, size: int = 128) -> np.ndarray:
    """Stacks of smoothly evolving random blobs (a structure family no real set covers)."""
    from scipy.ndimage import gaussian_filter

    field3d = gaussian_filter(rng.standard_normal((n_slices * 2, size, size)).astype(np.float32),
                              (2.5, rng.uniform(3, 9), rng.uniform(3, 9)))[::2]
    levels = np.quantile(field3d, [0.4, 0.7, 0.9])
    out = np.digitize(field3d, levels).astype(np.float32) / 3
    out = gaussian_filter(out, (0, 0.8, 0.8))
    return np.clip(out + 0.02 * rng.standard_normal(out.shape), 0, 1).astype(np.float32)


def phantoms(n_volumes: int, seed: int = 0, size: int = 128) -> ImageSet:
    """``n_volumes`` phantom stacks, alternating CT-like and blob families."""
    rng = np.random.default_rng(seed)
    out = ImageSet()
    for v in range(n_volumes):
        stack = ct_phantom_volume(rng, size=size) if v % 2 == 0 else blob_phantom_volume(rng, size=size)
        name = f"phantom{v:04d}"
        for i, sl in enumerate(stack):
            out.add(sl, name, name, i)
    return out


PACKAGE_IMAGES = ("camera", "moon", "coins", "page", "text", "horse", "brick", "grass", "gravel",
                  "retina", "microaneurysms", "immunohistochemistry", "cell", "astronaut",
                  "hubble_deep_field", "rocket", "coffee", "chelsea", "clock", "shepp_logan_phantom")


def package_image_tiles(size: int = 128, scales: tuple[int, ...] = (1, 2, 3)) -> ImageSet:
    """Non-overlapping tiles of the photographs and micrographs scikit-image ships
    (bundled in its wheel: no download).  Each source image is its own subject."""
    from skimage import data
    from skimage.color import rgb2gray

    out = ImageSet()
    for name in PACKAGE_IMAGES:
        img = getattr(data, name)()
        img = rgb2gray(img[..., :3]) if img.ndim == 3 else img.astype(np.float32)
        side = min(img.shape)
        for k in scales:
            tile = side // k
            for r in range(k):
                for c in range(img.shape[1] // tile):
                    crop = img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                    if crop.shape[0] != tile or crop.std() < 1e-3:
                        continue
                    out.add(to_model_input(crop, size), f"skimage_{name}")
    return out
