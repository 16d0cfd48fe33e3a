"""NIfTI-1/2 (``.nii``, ``.nii.gz``) and FreeSurfer MGH (``.mgh``, ``.mgz``) reader, with nibabel.

Volumes are brought to the closest canonical orientation (``nib.as_closest_canonical``:
voxel axes x→R, y→A, z→S) so that slice axis 2 is axial whatever the scanner wrote.
Both formats carry a voxel→RAS affine, so both take this one path.  A 4D file needs
``IngestConfig.volume_index`` (which volume of the series to audit); only that volume is
read from disk.  Scaling (``scl_slope``/``scl_inter``) is applied; the
native dtype is kept when there is none.
"""
from __future__ import annotations

import gzip
import math
import zlib
from typing import Iterator

import numpy as np

from ..config import IngestConfig
from . import errors
from .errors import QuarantineError
from .quiet import quiet
from .sources import Source, Unit, check_pixels


FORMAT_NAMES = {"nifti": "NIfTI", "mgh": "MGH"}


def _load_header(path, fmt: str):
    import nibabel as nib

    try:
        with quiet("nibabel"):
            return nib.load(path)
    except (EOFError, zlib.error) as exc:
        raise QuarantineError(errors.TRUNCATED_GZIP) from exc
    except gzip.BadGzipFile as exc:
        raise QuarantineError(errors.CORRUPT_GZIP) from exc
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, ValueError...
        raise QuarantineError(errors.CORRUPT.format(format=FORMAT_NAMES[fmt])) from exc


def _select_volume(img, config: IngestConfig):
    """Drop trailing singleton axes; pick ``config.volume_index`` of a 4D image."""
    shape = img.shape
    while len(shape) > 3 and shape[-1] == 1:
        img = img.slicer[..., 0]
        shape = img.shape
    if len(shape) == 2:
        return img.slicer[:, :, None]
    if len(shape) == 3:
        return img
    if len(shape) != 4:
        raise QuarantineError(errors.TOO_MANY_DIMS.format(shape="x".join(map(str, shape))))
    if config.volume_index is None:
        raise QuarantineError(errors.NEED_VOLUME_INDEX)
    if not 0 <= config.volume_index < shape[3]:
        raise QuarantineError(errors.VOLUME_INDEX_RANGE.format(index=config.volume_index, last=shape[3] - 1))
    return img.slicer[..., config.volume_index]


def _read_data(img, is_gzip: bool, fmt: str):
    """(canonical image, its voxels); reorienting reads the voxels, so it is inside the
    error mapping too."""
    import nibabel as nib
    from nibabel.orientations import OrientationError

    try:
        with quiet("nibabel"):  # a damaged header's overflow warnings
            img = nib.as_closest_canonical(img)
            return img, np.asanyarray(img.dataobj)
    except OrientationError as exc:  # a singular affine
        raise QuarantineError(errors.BAD_HEADER.format(format=FORMAT_NAMES[fmt],
                                                       problem="degenerate orientation")) from exc
    except EOFError as exc:
        raise QuarantineError(errors.TRUNCATED_GZIP if is_gzip else errors.TRUNCATED) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise QuarantineError(errors.CORRUPT_GZIP) from exc
    except (ValueError, OSError) as exc:  # "requested N bytes, got M" for short .nii files
        raise QuarantineError(errors.TRUNCATED if "bytes" in str(exc) else
                              errors.CORRUPT.format(format=FORMAT_NAMES[fmt])) from exc


def read_nibabel(unit: Unit, config: IngestConfig) -> Iterator[Source]:
    """One NIfTI or MGH file -> one volume Source (X, Y, Z) in canonical RAS voxel order."""
    cand, fmt = unit.files[0], unit.format
    img = _load_header(cand.path, fmt)
    check_pixels(math.prod(int(n) for n in img.shape[:3]), config)
    img, data = _read_data(_select_volume(img, config), str(cand.path).lower().endswith((".gz", ".mgz")), fmt)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    yield Source(unit.base_id, str(cand.path), fmt, data, is_volume=True, spacing=spacing, display=True,
                 may_be_hu=True)
