"""NumPy ``.npy`` / ``.npz`` readers.

A 2D array is one image, a 3D array a volume sliced along ``IngestConfig.slice_axis``
*of the array* (axes 0/1/2 are named x/y/z in ids; no display transform, no reorientation:
a plain array has no anatomy).  ``.npy`` headers are read through a memory map so the
size limit is checked before anything is loaded; pickled (object) arrays are refused.
Each array of an ``.npz`` is its own image or volume with id ``<file>/<array name>``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..config import IngestConfig
from . import errors
from .errors import QuarantineError
from .sources import Rejected, Source, Unit, check_pixels


def _checked(array: np.ndarray, config: IngestConfig) -> np.ndarray:
    """Validate dtype/shape/size of a (possibly memory-mapped) array and load it."""
    if array.dtype.kind not in "biuf":
        raise QuarantineError(errors.UNSUPPORTED_DTYPE.format(dtype=array.dtype))
    check_pixels(int(array.size), config)
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim not in (2, 3):
        raise QuarantineError(errors.TOO_MANY_DIMS.format(shape="x".join(map(str, array.shape))))
    loaded = np.array(array)
    return loaded.astype(np.uint8) if loaded.dtype == bool else loaded


def _source(base_id: str, path: str, fmt: str, array: np.ndarray) -> Source:
    return Source(base_id, path, fmt, array, is_volume=array.ndim == 3)


def read_npy(unit: Unit, config: IngestConfig) -> Iterator[Source]:
    """``.npy`` -> one Source: (H, W) image or (A0, A1, A2) volume."""
    cand = unit.files[0]
    try:
        mapped = np.load(cand.path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        text = str(exc).lower()
        reason = (errors.UNSUPPORTED_DTYPE.format(dtype="object") if "pickle" in text or "object" in text
                  else errors.TRUNCATED if "size" in text or "shape" in text or "bytes" in text
                  else errors.CORRUPT.format(format="NPY"))
        raise QuarantineError(reason) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged header dict: SyntaxError, TokenError, OSError...
        raise QuarantineError(errors.CORRUPT.format(format="NPY")) from exc
    yield _source(unit.base_id, str(cand.path), "npy", _checked(mapped, config))


def _npz_member_size(archive, name: str) -> int:
    """Element count of one NPZ member from its header, without decompressing the data."""
    fmt = np.lib.format
    with archive.zip.open(f"{name}.npy") as f:
        version = fmt.read_magic(f)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, _ = reader(f)
    return int(np.prod(shape))


def read_npz(unit: Unit, config: IngestConfig) -> Iterator[Source | Rejected]:
    """``.npz`` -> one Source per array (sorted by name); a bad array is Rejected alone."""
    cand = unit.files[0]
    try:
        archive = np.load(cand.path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - BadZipFile, OSError, a damaged member header...
        raise QuarantineError(errors.CORRUPT.format(format="NPZ")) from exc
    with archive:
        for name in sorted(archive.files):
            base_id = f"{unit.base_id}/{name}"
            try:
                check_pixels(_npz_member_size(archive, name), config)
                yield _source(base_id, str(cand.path), "npz", _checked(archive[name], config))
            except QuarantineError as exc:
                yield Rejected(base_id, str(cand.path), "npz", exc.reason)
            except Exception:  # noqa: BLE001 - one damaged member must not stop the others
                yield Rejected(base_id, str(cand.path), "npz", errors.CORRUPT.format(format="NPZ"))
