"""What readers produce: :class:`Source` (a 2D image or a 3D volume with its metadata)
or :class:`Rejected` (one part of a file that must be quarantined), and the work
:class:`Unit` they read (one file, or all files of one DICOM series)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import IngestConfig
from . import errors
from .discover import Candidate
from .errors import QuarantineError


@dataclass
class Unit:
    """One reader call: a file, or the files of one DICOM series (ordered by position)."""

    format: str
    files: list[Candidate]
    base_id: str


@dataclass
class Source:
    """A 2D image or a 3D volume ready for slicing and windowing.

    ``data``: (H, W) or (H, W, 3|4) for an image; (X, Y, Z) for a volume (canonical RAS
    voxel axes for NIfTI/DICOM, array axes for NPY/TIFF).  Any numeric dtype, NaNs allowed.
    ``display``: slices are shown as ``flipud(slice.T)`` (the radiological-viewer layout of
    canonical RAS data: anterior / superior up).  ``window``: fixed intensity window (CT in
    HU) or None for a percentile window.  ``dtype_window``: an integer 2D image may be
    windowed over its dtype range.  ``slice_paths``: for a DICOM series, the file of each
    slice index along voxel axis ``slice_paths_axis``.  ``may_be_hu``: a scanner volume
    format (NIfTI, NRRD, MetaImage, MGH) whose values may be Hounsfield units: a CT-like
    minimum selects the fixed CT window.
    """

    base_id: str
    source_path: str
    format: str
    data: np.ndarray
    is_volume: bool
    spacing: tuple[float, ...] | None = None
    window: tuple[float, float] | None = None
    display: bool = False
    dtype_window: bool = False
    slice_paths: dict[int, str] = field(default_factory=dict)
    slice_paths_axis: int = -1
    may_be_hu: bool = False


@dataclass
class Rejected:
    """A part of a file (an NPZ array, a DICOM slice) that is quarantined while the rest of
    the file is read."""

    image_id: str
    source_path: str
    format: str
    reason: str


def check_pixels(n_pixels: int, config: IngestConfig) -> None:
    """Refuse to decode more than ``config.max_pixels`` values (checked from headers)."""
    if n_pixels > config.max_pixels:
        raise QuarantineError(errors.TOO_LARGE_PIXELS.format(pixels=n_pixels, limit=config.max_pixels))


def is_ct_like(volume: np.ndarray) -> bool:
    """Intensities that look like Hounsfield units (air at about -1000)."""
    with np.errstate(invalid="ignore"):
        low = float(np.nanmin(volume)) if volume.size else np.nan
    return bool(low <= -500.0)
