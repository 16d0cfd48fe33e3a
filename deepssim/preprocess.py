"""Turning any 2D array into the encoder's input.

One function decides how pixels are normalised so that training, registration and
audits see images the same way: intensities are windowed to [0, 1] (a percentile
window by default, a fixed window when given, e.g. a CT window in HU), the image is
zero-padded to a square and resized bilinearly to ``size × size``.
"""
from __future__ import annotations

import numpy as np


def window_to_unit(image: np.ndarray, window: tuple[float, float] | None = None,
                   percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map intensities to [0, 1]: ``window`` (low, high) if given, else the percentile
    window of the finite pixels.  NaNs become 0.  Returns float32, same shape."""
    x = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.any():
        raise ValueError("image has no finite pixels")
    if window is None:
        lo, hi = np.percentile(x[finite], percentiles)
        if hi <= lo:
            lo, hi = float(x[finite].min()), float(x[finite].max())
    else:
        lo, hi = window
    x = np.where(finite, x, lo)
    if hi <= lo:
        return np.zeros_like(x)
    with np.errstate(over="ignore"):
        wide = not np.isfinite(np.float32(hi) - np.float32(lo))
    if wide:  # a span beyond float32 (damaged or absurd values): inf/inf would give NaN
        x = x.astype(np.float64)
    with np.errstate(over="ignore"):  # values far outside the window clip to 0 or 1 anyway
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    side = max(h, w)
    out = np.zeros((side, side), dtype=image.dtype)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0:y0 + h, x0:x0 + w] = image
    return out


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square float image to ``size × size`` (anti-aliased when
    shrinking)."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    from skimage.transform import resize as sk_resize

    shrinking = image.shape[0] > size
    return sk_resize(image, (size, size), order=1, anti_aliasing=shrinking,
                     preserve_range=True).astype(np.float32)


# Padding a 30,000 × 128 strip to a square would make a 30,000² image (and skimage's
# anti-aliasing filter copies of it); longer sides are first shrunk by block means.
MAX_SQUARE_SIDE = 4096


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float image -> zero-padded to a square, then ``size × size`` float32.

    Images whose longer side exceeds :data:`MAX_SQUARE_SIDE` are block-averaged first, so
    memory stays bounded whatever the aspect ratio; smaller images are unaffected."""
    factor = -(-max(image.shape) // MAX_SQUARE_SIDE)
    if factor > 1:
        from skimage.transform import downscale_local_mean

        image = downscale_local_mean(image, (factor, factor))
    return resize(pad_to_square(image), size)


def to_model_input(image: np.ndarray, size: int = 128, window: tuple[float, float] | None = None,
                   percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """(H, W) array of any dtype -> (size, size) float32 in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    return square_resize(window_to_unit(image, window, percentiles), size)
