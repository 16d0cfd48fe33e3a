"""The generator's grid: a generator that works at ``size`` × ``size`` sees a training image
down-sampled to its size, and its samples are up-sampled back to the output size.

A perfect memorizer therefore reproduces ``through_grid(image, size)``, not ``image``:
benchmarks of generated data label each sample against the training image taken through
the same grid (``DESIGN.md``: generated images), so that a perfect copy scores 1.0.
"""
from __future__ import annotations

import numpy as np
from skimage.transform import resize


def to_grid(image: np.ndarray, size: int) -> np.ndarray:
    """Down-sample a 2D image (H, W) to (size, size), area-averaged (anti-aliased), float32."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape == (size, size):
        return image.copy()
    return resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def from_grid(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Up-sample a generator-grid image (size, size) to ``shape`` bilinearly, float32."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape == tuple(shape):
        return image.copy()
    return resize(image, shape, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)


def through_grid(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` (H, W) as a generator of grid ``size`` would reproduce it: down, then back up."""
    image = np.asarray(image, dtype=np.float32)
    return from_grid(to_grid(image, size), image.shape)
