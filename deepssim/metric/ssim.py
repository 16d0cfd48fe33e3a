"""The reference SSIM that DeepSSIM learns to predict.

Definition (kept exactly as the DeepSSIM reference code so labels are comparable):
each grayscale image is z-scored (``(x - mean) / std``), then
``skimage.metrics.structural_similarity(a, b, data_range=a.max() - a.min())`` with
scikit-image defaults (7×7 uniform window, sample covariance, K1=0.01, K2=0.03).

Two implementations:

* :func:`reference_ssim` / :func:`ssim_targets` — scikit-image itself, the source of truth,
  with a process pool for tables of pairs.
* :func:`ssim_torch` — a batched torch port used to label training pairs on the fly on
  the training device.  It agrees with scikit-image to 1e-5 in float64 and 1e-4 in
  float32 (tested); only the cropped
  interior of the SSIM map enters the mean, so border handling cannot differ.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np

K1, K2, WINDOW = 0.01, 0.03, 7


def zscore(image: np.ndarray) -> np.ndarray:
    """(H, W) array -> float64 z-scored copy.  A constant image has no structure: ValueError."""
    x = np.asarray(image, dtype=np.float64)
    std = x.std()
    if not np.isfinite(std) or std == 0:
        raise ValueError("constant or non-finite image: SSIM is undefined")
    return (x - x.mean()) / std


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Aligned reference SSIM of two same-shape 2D images; range [-1, 1]."""
    from skimage.metrics import structural_similarity

    if a.shape != b.shape:
        raise ValueError(f"SSIM needs equal shapes, got {a.shape} and {b.shape}")
    za, zb = zscore(a), zscore(b)
    return float(structural_similarity(za, zb, data_range=za.max() - za.min()))


def _ssim_chunk(args: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    a, b = args
    return np.array([reference_ssim(x, y) for x, y in zip(a, b)], dtype=np.float64)


def ssim_targets(a: np.ndarray | Sequence[np.ndarray], b: np.ndarray | Sequence[np.ndarray],
                 workers: int | None = None, chunk: int = 256) -> np.ndarray:
    """Reference SSIM of ``a[i]`` vs ``b[i]`` for every i, using ``workers`` processes
    (default: all cores).  Returns float64 of shape (N,)."""
    if len(a) != len(b):
        raise ValueError("a and b must hold the same number of images")
    n = len(a)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or n <= chunk:
        return _ssim_chunk((a, b))
    jobs = [(a[i:i + chunk], b[i:i + chunk]) for i in range(0, n, chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return np.concatenate(list(pool.map(_ssim_chunk, jobs)))


def ssim_torch(a, b):
    """Batched reference SSIM in torch.

    Args:
        a, b: tensors of shape (B, H, W) or (B, 1, H, W), any float dtype, H, W >= 7.
    Returns:
        (B,) tensor of SSIM values in the dtype of ``a`` (computed in float32 or better).
    """
    import torch
    import torch.nn.functional as F

    if a.dim() == 3:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.to(dtype), b.to(dtype)

    def standardise(x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-12)
        return (x - mean) / std

    a, b = standardise(a), standardise(b)
    data_range = (a.amax(dim=(1, 2, 3)) - a.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    cov_norm = WINDOW * WINDOW / (WINDOW * WINDOW - 1.0)

    def mean_filter(x):
        return F.avg_pool2d(x, WINDOW, stride=1)

    ux, uy = mean_filter(a), mean_filter(b)
    vx = cov_norm * (mean_filter(a * a) - ux * ux)
    vy = cov_norm * (mean_filter(b * b) - uy * uy)
    vxy = cov_norm * (mean_filter(a * b) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))
