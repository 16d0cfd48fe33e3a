"""PNG, JPEG and TIFF readers (Pillow; tifffile for TIFF, which covers 16-bit, float and
multi-page files).

Colour images are returned as (H, W, 3) and turned to grey later (after hashing).  A
multi-page TIFF is a volume whose pages are the z axis: (H, W, pages).  Integer 2D images
are windowed over their dtype's full range when that range is used (see
:mod:`deepssim.io.slicing`).
"""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np

from ..config import IngestConfig
from . import errors
from .errors import QuarantineError
from .quiet import quiet
from .sources import Source, Unit, check_pixels

_KEEP_MODES = {"L", "I;16", "I;16L", "I;16B", "I", "F", "RGB"}


def _pil_array(path, config: IngestConfig) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_pixels(im.width * im.height, config)
                if im.mode not in _KEEP_MODES:
                    im = im.convert("RGB")  # palette, CMYK, 1-bit, LA, RGBA
                return np.asarray(im).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise QuarantineError(errors.TOO_LARGE_PIXELS.format(pixels="> PIL limit", limit=config.max_pixels)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise QuarantineError(_truncated_or_corrupt(exc, "image")) from exc


def _truncated_or_corrupt(exc: Exception, fmt: str) -> str:
    text = str(exc).lower()
    return errors.TRUNCATED if "truncated" in text or "end of file" in text else errors.CORRUPT.format(format=fmt)


def read_pil(unit: Unit, config: IngestConfig) -> Iterator[Source]:
    """PNG / JPEG -> one 2D Source: (H, W) uint8/uint16/int32/float32 or (H, W, 3)."""
    cand = unit.files[0]
    data = _pil_array(cand.path, config)
    yield Source(unit.base_id, str(cand.path), unit.format, data, is_volume=False, dtype_window=True)


def read_tiff(unit: Unit, config: IngestConfig) -> Iterator[Source]:
    """TIFF -> a 2D Source, or a volume (H, W, pages) for a multi-page grey TIFF."""
    import tifffile

    cand = unit.files[0]
    try:
        with quiet("tifffile"), tifffile.TiffFile(cand.path) as tif:
            series = tif.series[0]
            check_pixels(int(np.prod(series.shape)), config)
            data = series.asarray()
    except QuarantineError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise QuarantineError(_truncated_or_corrupt(exc, "TIFF")) from exc
    data = np.squeeze(data)
    is_rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    if data.ndim == 2 or is_rgb:
        yield Source(unit.base_id, str(cand.path), "tiff", data, is_volume=False, dtype_window=True)
    elif data.ndim == 3:
        yield Source(unit.base_id, str(cand.path), "tiff", np.moveaxis(data, 0, -1), is_volume=True)
    else:
        raise QuarantineError(errors.TOO_MANY_DIMS.format(shape="x".join(map(str, data.shape))))
