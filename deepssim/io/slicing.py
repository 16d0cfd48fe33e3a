"""From a :class:`~deepssim.io.sources.Source` to 2D slices windowed to [0, 1].

Intensity normalisation (why these choices):

* **Volumes** get one window for the whole volume, so neighbouring slices keep their
  relative brightness and a slice looks the same whichever file format carried it.
  CT (DICOM Modality ``CT``, or a NIfTI/NRRD/MetaImage/MGH volume whose minimum is <= -500,
  i.e. looks like HU) uses
  the fixed ``IngestConfig.ct_window`` in HU: HU are absolute, and a fixed window makes a CT
  slice independent of what else is in the field of view.  Everything else (MR, PET, plain
  arrays) uses the ``IngestConfig.percentile_window`` percentiles of all finite voxels
  (a fixed-stride subsample above 16 M voxels).
* **2D files** get their own window.  An 8- or 16-bit integer image that uses its dtype's
  range (99.5th percentile >= 25 % of the dtype maximum) is windowed over the full dtype
  range (0..255, 0..65535): such a file is a display image whose exporter already chose a
  window, and stretching it again would change its contrast; it also makes an 8-bit image
  and its 16-bit copy (x * 257) identical.  A dark or high-bit-depth-in-16-bit image
  (e.g. 12-bit CT stored as uint16) would be nearly empty under the dtype window, so it
  falls back to the percentile window, as do float images.  A lone DICOM CT image
  uses the CT window.  All rules depend only on pixel content, so a file and a byte-
  identical (or pixel-identical) copy give identical model inputs.

Near-empty slices of a volume (foreground fraction below
``IngestConfig.foreground_threshold``, foreground = windowed value > ``FOREGROUND_LEVEL``)
are skipped; a 2D file whose foreground is under ``IngestConfig.min_foreground_2d`` (a
lower bar: a sparse synthetic image must still be audited) is quarantined.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..config import IngestConfig
from ..preprocess import window_to_unit
from . import errors
from .sources import Rejected, Source, is_ct_like

FOREGROUND_LEVEL = 0.1
AXIS_NAMES = "xyz"
_PERCENTILE_SAMPLE = 1 << 24
_DTYPE_WINDOW_MIN_USE = 0.25
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class Slice:
    """One accepted 2D image.

    ``raw``: the pixels before normalisation (any dtype, (H, W) or (H, W, 3));
    ``unit``: grey, windowed to [0, 1], float32 (H, W) at the original resolution.
    """

    image_id: str
    source_path: str
    format: str
    raw: np.ndarray
    unit: np.ndarray
    spacing: tuple[float, ...] | None
    volume_id: str | None
    axis: str | None
    index: int
    nan_fraction: float
    foreground_fraction: float
    intensity_min: float
    intensity_max: float


def raw_sha256(array: np.ndarray) -> str:
    """SHA-256 of a 2D array's content: little-endian dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{'x'.join(map(str, a.shape))}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) colour -> (H, W) float32 luminance; grey images are returned as they are."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3].astype(np.float32) @ _LUMA
    return image


def _finite_range(x: np.ndarray) -> tuple[float, float] | None:
    with np.errstate(invalid="ignore"):
        if x.dtype.kind == "f" and not np.isfinite(x).any():
            return None
        return float(np.nanmin(x)), float(np.nanmax(x))


def percentile_window(x: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Percentile window of the finite values of ``x`` (a fixed-stride subsample when huge);
    falls back to (min, max) when the percentiles coincide."""
    if x.size > _PERCENTILE_SAMPLE:
        step = int(np.ceil((x.size / _PERCENTILE_SAMPLE) ** (1.0 / x.ndim)))
        x = x[tuple(slice(None, None, step) for _ in range(x.ndim))]
    values = np.asarray(x, dtype=np.float32)
    values = values[np.isfinite(values)]
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return lo, hi


def image_window(gray: np.ndarray, raw_dtype: np.dtype, source: Source,
                 config: IngestConfig) -> tuple[float, float]:
    """The window of a 2D file (see module docstring)."""
    if source.window is not None:
        return source.window
    lo, hi = percentile_window(gray, config.percentile_window)
    if source.dtype_window and raw_dtype in (np.uint8, np.uint16):
        top = float(np.iinfo(raw_dtype).max)
        if hi >= _DTYPE_WINDOW_MIN_USE * top:
            return 0.0, top
    return lo, hi


def volume_window(data: np.ndarray, source: Source, config: IngestConfig) -> tuple[float, float]:
    """The window of a whole volume (see module docstring)."""
    if source.window is not None:
        return source.window
    if source.may_be_hu and is_ct_like(data):
        return config.ct_window
    return percentile_window(data, config.percentile_window)


def _foreground(unit: np.ndarray) -> float:
    return float(np.mean(unit > FOREGROUND_LEVEL))


def _nan_fraction(x: np.ndarray) -> float:
    return float(np.isnan(x).mean()) if x.dtype.kind == "f" else 0.0


def _image(source: Source, config: IngestConfig) -> Iterator[Slice | Rejected]:
    raw = source.data
    gray = to_gray(raw)
    reject = lambda reason: Rejected(source.base_id, source.source_path, source.format, reason)  # noqa: E731
    if min(gray.shape) < config.min_side:
        yield reject(errors.TOO_SMALL.format(side=config.min_side))
        return
    rng = _finite_range(gray)
    if rng is None:
        yield reject(errors.ALL_NAN_IMAGE)
        return
    if rng[0] == rng[1]:
        yield reject(errors.CONSTANT_IMAGE)
        return
    unit = window_to_unit(gray, image_window(gray, raw.dtype, source, config))
    fg = _foreground(unit)
    if fg < config.min_foreground_2d:
        yield reject(errors.NEAR_EMPTY_IMAGE.format(fraction=fg, threshold=config.min_foreground_2d))
        return
    yield Slice(source.base_id, source.source_path, source.format, raw, unit, source.spacing, None, None,
                -1, _nan_fraction(gray), fg, rng[0], rng[1])


def _in_plane(source: Source, axis: int) -> tuple[tuple[int, int], tuple[float, float] | None]:
    """Shape and spacing (rows, cols) of the displayed slices along ``axis``."""
    p, q = [a for a in range(3) if a != axis]
    shape = source.data.shape
    sp = source.spacing
    if source.display:
        return (shape[q], shape[p]), (sp[q], sp[p]) if sp else None
    return (shape[p], shape[q]), (sp[p], sp[q]) if sp else None


def _take(source: Source, axis: int, k: int) -> np.ndarray:
    s = source.data[(slice(None),) * axis + (k,)]
    return np.ascontiguousarray(np.flipud(s.T)) if source.display else np.ascontiguousarray(s)


def _volume(source: Source, config: IngestConfig) -> Iterator[Slice | Rejected]:
    axis = config.slice_axis
    reject = lambda reason: Rejected(source.base_id, source.source_path, source.format, reason)  # noqa: E731
    shape, spacing = _in_plane(source, axis)
    if min(shape) < config.min_side:
        yield reject(errors.TOO_SMALL.format(side=config.min_side))
        return
    rng = _finite_range(source.data)
    if rng is None:
        yield reject(errors.ALL_NAN)
        return
    if rng[0] == rng[1]:
        yield reject(errors.CONSTANT_VOLUME)
        return
    window = volume_window(source.data, source, config)
    kept = 0
    for k in range(source.data.shape[axis]):
        raw = _take(source, axis, k)
        srng = _finite_range(raw)
        if srng is None or srng[0] == srng[1]:
            continue
        unit = window_to_unit(raw, window)
        fg = _foreground(unit)
        if fg < config.foreground_threshold:
            continue
        kept += 1
        path = source.slice_paths.get(k, source.source_path) if axis == source.slice_paths_axis else source.source_path
        yield Slice(f"{source.base_id}#{AXIS_NAMES[axis]}={k}", path, source.format, raw, unit, spacing,
                    source.base_id, AXIS_NAMES[axis], k, _nan_fraction(raw), fg, srng[0], srng[1])
    if kept == 0:
        yield reject(errors.NO_FOREGROUND_SLICE)


def iter_slices(source: Source, config: IngestConfig) -> Iterator[Slice | Rejected]:
    """Accepted slices (or the one image) of ``source``, in slice order, or Rejected items."""
    if source.data.dtype.kind not in "biuf":
        yield Rejected(source.base_id, source.source_path, source.format,
                       errors.UNSUPPORTED_DTYPE.format(dtype=source.data.dtype))
        return
    yield from (_volume if source.is_volume else _image)(source, config)
