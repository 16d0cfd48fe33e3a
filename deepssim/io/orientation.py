"""One canonical voxel frame for every volume format.

NIfTI and MGH carry a voxel→RAS affine; NRRD and MetaImage carry per-axis direction
vectors, spacing and an origin in a named world space (MetaImage always LPS).  Every
reader turns its header into a voxel→RAS affine and calls :func:`to_canonical`, which
applies nibabel's closest-canonical reorientation (voxel axes x→R, y→A, z→S) — the same
rule the NIfTI reader applies through ``nib.as_closest_canonical`` — so the same voxels in
any format give the same slices.
"""
from __future__ import annotations

import numpy as np

from ..config import IngestConfig
from . import errors
from .errors import QuarantineError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _affine_from_axes(directions: np.ndarray, origin: np.ndarray, to_ras: np.ndarray) -> np.ndarray:
    """(4, 4) voxel→RAS affine from ``directions`` (3, 3): row i = world step of voxel axis
    i (spacing included), ``origin`` (3,) and ``to_ras`` (3, 3): world space → RAS."""
    affine = np.eye(4)
    with np.errstate(all="ignore"):
        affine[:3, :3] = to_ras @ np.asarray(directions, float).T
        affine[:3, 3] = to_ras @ np.asarray(origin, float)
    return affine


def _complete_axes(directions: np.ndarray) -> np.ndarray:
    """(2|3, 3) axis directions -> (3, 3): a 2D image's missing axis is its unit normal."""
    directions = np.asarray(directions, float)
    if directions.shape[0] == 3:
        return directions
    normal = np.cross(directions[0], directions[1])
    length = float(np.linalg.norm(normal))
    return np.vstack([directions, normal / length if length > 0 else normal])


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(X, Y, Z) voxels + voxel→RAS affine -> (voxels in closest-RAS order, spacing in mm).

    Raises :class:`QuarantineError` for an affine without three independent axes.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    with np.errstate(all="ignore"):  # a damaged header's 1e308 spacing must not warn, only fail
        affine = np.asarray(affine, float)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        usable = np.all(np.isfinite(affine)) and np.all(np.isfinite(zooms)) and np.all(zooms > 0)
        try:
            ornt = io_orientation(affine) if usable else None
        except Exception:  # noqa: BLE001 - nibabel's OrientationError for a singular matrix
            ornt = None
    if ornt is None or np.isnan(ornt).any():
        raise QuarantineError(errors.BAD_HEADER.format(format="volume", problem="degenerate orientation"))
    spacing = tuple(float(zooms[i]) for i in np.argsort(ornt[:, 0]))
    return apply_orientation(data, ornt), spacing


def pick_volume(data: np.ndarray, spatial: list[bool], config: IngestConfig) -> np.ndarray:
    """Keep the spatial axes of ``data`` (in order) and at most one other axis, chosen by
    ``config.volume_index`` like the fourth axis of a NIfTI file; a non-spatial axis of
    size 1 is dropped.  Returns (X, Y, Z) (a 2D image gets Z = 1)."""
    extra = [i for i, s in enumerate(spatial) if not s and data.shape[i] > 1]
    keep = [i for i, s in enumerate(spatial) if s]
    if len(keep) not in (2, 3) or len(extra) > 1:
        raise QuarantineError(errors.TOO_MANY_DIMS.format(shape="x".join(map(str, data.shape))))
    if extra:
        axis = extra[0]
        if config.volume_index is None:
            raise QuarantineError(errors.NEED_VOLUME_INDEX)
        if not 0 <= config.volume_index < data.shape[axis]:
            raise QuarantineError(errors.VOLUME_INDEX_RANGE.format(index=config.volume_index,
                                                                   last=data.shape[axis] - 1))
        data = np.take(data, config.volume_index, axis=axis)
        spatial = spatial[:axis] + spatial[axis + 1:]
    data = data.reshape([n for n, s in zip(data.shape, spatial) if s])
    return data[:, :, None] if data.ndim == 2 else data


def oriented_volume(data: np.ndarray, spatial: list[bool], steps: np.ndarray, origin: np.ndarray,
                    to_ras: np.ndarray, config: IngestConfig) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A header-described array to the canonical frame: :func:`pick_volume`, then the affine
    from the spatial axes' world ``steps`` (n_spatial, 3), ``origin`` (3,) and ``to_ras``
    (world → RAS), then :func:`to_canonical`.  Returns (voxels, spacing in mm)."""
    volume = pick_volume(data, spatial, config)
    return to_canonical(volume, _affine_from_axes(_complete_axes(steps), origin, to_ras))
