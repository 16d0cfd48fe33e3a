"""DICOM reader (pydicom): single files, multi-frame files and series.

Single-frame files are grouped into series by (folder, SeriesInstanceUID).  The UID itself
is never kept: a series is named by the first 8 hex digits of a salted SHA-256 of the UID
(salt: ``$DEEPSSIM_ID_SALT`` or a fixed project default), so ids are stable across runs but
do not reveal the UID.  Slices are ordered by ImagePositionPatient projected on the slice
normal (row × column direction cosines), falling back to InstanceNumber, then file name,
so the file names and the order the disk lists them in do not matter.

Compressed pixel data is decoded by pydicom's plugins: Pillow (JPEG baseline, JPEG 2000)
and GDCM (``python-gdcm``: JPEG lossless, JPEG-LS, JPEG 2000, RLE).  What none of them
decodes (12-bit lossy "JPEG Extended" is the one seen) is quarantined, naming the syntax.

Pixel values go through the modality LUT (RescaleSlope / RescaleIntercept: CT in HU);
MONOCHROME1 images are inverted (``min + max - x``, over the whole series) so that high
values are bright everywhere.  CT (Modality ``CT``) is windowed with the fixed
``IngestConfig.ct_window`` in HU, everything else with a percentile window.

A series (or a multi-frame file) becomes a volume in canonical RAS voxel order (the LPS
patient frame of DICOM is converted to RAS, then ``nib.as_closest_canonical``) so that its
slices are named and laid out like NIfTI slices.  A lone single-frame file is a 2D image
shown as stored (rows top to bottom).

Nothing read from a DICOM header except geometry, modality and photometric
interpretation is used; patient/study identifiers, UIDs and dates never reach ids,
reasons, logs or exceptions (parser messages are not propagated: they may quote values).
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterator

import numpy as np

from ..config import IngestConfig
from . import errors
from .discover import Candidate
from .errors import QuarantineError
from .quiet import quiet
from .sources import Rejected, Source, Unit, check_pixels

DEFAULT_SALT = "deepssim-gate/series-id/v1"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def series_hash(uid: str) -> str:
    """Salted SHA-256 (hex) of a SeriesInstanceUID (or any identifier that must not be shown:
    :func:`deepssim.audit.outputs.image_ref`); salt from ``$DEEPSSIM_ID_SALT``."""
    salt = os.environ.get("DEEPSSIM_ID_SALT", DEFAULT_SALT)
    return hashlib.sha256(f"{salt}\x00{uid}".encode()).hexdigest()


@dataclass
class DicomInfo:
    """What the planning pass needs from one header (no identifiers kept)."""

    cand: Candidate
    series: str          # salted hash of the series UID ("" when absent)
    frames: int
    shape: tuple[int, int]
    position: float | None
    instance: int | None


def _quiet():
    """pydicom's warnings and log records quote header values ("Invalid value for VR PN:
    ..."), i.e. possibly patient data."""
    return quiet("pydicom")


# Files up to this size are parsed from memory: a damaged element length then reads what
# is there, where a read from disk first allocates the full claimed length (seen: 2.3 GB
# for a 5 kB file).
_IN_MEMORY_BYTES = 256 * 1024**2


def _read(path, pixels: bool):
    import pydicom

    try:
        if os.path.getsize(path) > _IN_MEMORY_BYTES:
            source, defer = path, None if pixels else 1024
        else:
            with open(path, "rb") as f:
                source, defer = io.BytesIO(f.read()), None
        with _quiet():
            ds = pydicom.dcmread(source, force=True, defer_size=defer)
            for _ in ds.iterall():  # decode every element now: decoding warns with the value
                pass
            return ds
    except Exception as exc:  # never propagate parser text: it may quote header values
        raise QuarantineError(errors.CORRUPT.format(format="DICOM")) from exc


def _orientation(ds) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines (LPS); axial when absent."""
    iop = _frame_attr(ds, "PlaneOrientationSequence", "ImageOrientationPatient", 0)
    if iop is None or len(iop) != 6:
        return np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    v = np.asarray([float(x) for x in iop])
    return v[:3], v[3:]


def _frame_attr(ds, seq: str, attr: str, frame: int):
    """An attribute from the per-frame, then shared functional groups, then the top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            value = getattr(getattr(ds, groups)[index], seq)[0].get(attr)
        except (AttributeError, IndexError, KeyError, TypeError):
            value = None
        if value is not None:
            return value
    return ds.get(attr)


def _position(ds, frame: int, normal: np.ndarray) -> float | None:
    ipp = _frame_attr(ds, "PlanePositionSequence", "ImagePositionPatient", frame)
    if ipp is None or len(ipp) != 3:
        return None
    return float(np.dot([float(x) for x in ipp], normal))


def _normal(ds) -> np.ndarray:
    row, col = _orientation(ds)
    return np.cross(row, col)


def _spacing(ds) -> tuple[float, float]:
    """(between rows, between columns) in mm; 1 when absent."""
    ps = _frame_attr(ds, "PixelMeasuresSequence", "PixelSpacing", 0)
    try:
        return float(ps[0]), float(ps[1])
    except (TypeError, IndexError, ValueError):
        return 1.0, 1.0


def header_info(cand: Candidate) -> DicomInfo:
    """Read one header (pixel data deferred) for planning; raises QuarantineError."""
    ds = _read(cand.path, pixels=False)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise QuarantineError(errors.DICOM_NO_PIXELS)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        shape = (int(ds.Rows), int(ds.Columns))
        instance = ds.get("InstanceNumber")
        instance = int(instance) if instance not in (None, "") else None
    except (AttributeError, TypeError, ValueError) as exc:
        raise QuarantineError(errors.CORRUPT.format(format="DICOM")) from exc
    uid = str(ds.get("SeriesInstanceUID") or "")
    return DicomInfo(cand, series_hash(uid) if uid else "", frames, shape,
                     _position(ds, 0, _normal(ds)), instance)


def _slice_order(info: DicomInfo) -> tuple:
    return (info.position is None, info.position or 0.0,
            info.instance if info.instance is not None else 0, info.cand.rel)


def plan_units(cands: list[Candidate]) -> tuple[list[Unit], list[tuple[Candidate, str]]]:
    """Group DICOM files into units: one per multi-frame file, one per (folder, series) of
    single-frame files (ordered along the slice normal).  Returns (units, rejected files)."""
    rejected: list[tuple[Candidate, str]] = []
    groups: dict[tuple[str, str], list[DicomInfo]] = defaultdict(list)
    units: list[Unit] = []
    for cand in cands:
        try:
            info = header_info(cand)
        except QuarantineError as exc:
            rejected.append((cand, exc.reason))
            continue
        except Exception:  # odd header values (e.g. a non-numeric position): never the text
            rejected.append((cand, errors.CORRUPT.format(format="DICOM")))
            continue
        if info.frames > 1:
            units.append(Unit("dicom", [cand], cand.rel))
        else:
            groups[(str(PurePosixPath(cand.rel).parent), info.series)].append(info)
    for (folder, series), infos in sorted(groups.items()):
        infos.sort(key=_slice_order)
        if len(infos) == 1:
            units.append(Unit("dicom", [infos[0].cand], infos[0].cand.rel))
            continue
        common = Counter(i.shape for i in infos).most_common(1)[0][0]
        for i in infos:
            if i.shape != common:
                rejected.append((i.cand, errors.DICOM_SHAPE_MISMATCH))
        name = f"series-{(series or series_hash(folder))[:8]}"
        base = name if folder == "." else f"{folder}/{name}"
        units.append(Unit("dicom", [i.cand for i in infos if i.shape == common], base))
    return units, rejected


def _is_known_syntax(syntax) -> bool:
    """A transfer syntax pydicom knows (an unknown one is file content, never quoted)."""
    from pydicom.uid import AllTransferSyntaxes

    return syntax is not None and str(syntax) in AllTransferSyntaxes


def _pixels(ds, config: IngestConfig) -> np.ndarray:
    """Modality-LUT-applied pixels: (rows, cols[, 3]) or (frames, rows, cols[, 3])."""
    from pydicom.pixels import apply_modality_lut

    frames = int(ds.get("NumberOfFrames") or 1)
    check_pixels(frames * int(ds.Rows) * int(ds.Columns), config)
    try:
        with _quiet():
            arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = syntax.name if _is_known_syntax(syntax) else "unknown transfer syntax"
        raise QuarantineError(errors.DICOM_UNDECODABLE.format(syntax=name)) from exc
    if str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME"):
        with _quiet():
            arr = apply_modality_lut(arr, ds)
    return arr


def _gray(arr: np.ndarray, samples: int) -> np.ndarray:
    if samples >= 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return arr


def _invert_monochrome1(arr: np.ndarray, ds) -> np.ndarray:
    if str(ds.get("PhotometricInterpretation", "")).strip() != "MONOCHROME1":
        return arr
    arr = arr.astype(np.float32)
    return float(np.nanmin(arr)) + float(np.nanmax(arr)) - arr


def _window(ds) -> bool:
    return str(ds.get("Modality", "")).upper() == "CT" and \
        str(ds.get("PhotometricInterpretation", "")).strip() != "MONOCHROME1"


def _affine(ds, slice_step: float) -> np.ndarray:
    """Voxel (i=column, j=row, k=slice) -> RAS mm."""
    row, col = _orientation(ds)
    dr, dc = _spacing(ds)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dc, col * dr, np.cross(row, col) * slice_step
    return _LPS_TO_RAS @ lps


def _canonical_volume(stack: np.ndarray, ds, slice_step: float):
    """(k, rows, cols) stack -> canonical (X, Y, Z) data, spacing, and where k went."""
    import nibabel as nib

    vol = np.ascontiguousarray(np.transpose(stack, (2, 1, 0)))
    affine = _affine(ds, slice_step or 1.0)
    img = nib.as_closest_canonical(nib.Nifti1Image(vol, affine))
    ornt = nib.io_orientation(affine)
    k_axis, k_flip = int(ornt[2, 0]), ornt[2, 1] < 0
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.asanyarray(img.dataobj), spacing, k_axis, k_flip


def _slice_step(positions: list[float | None]) -> float:
    known = [p for p in positions if p is not None]
    if len(known) < 2 or len(known) != len(positions):
        return 1.0
    steps = np.diff(known)
    return float(np.median(np.abs(steps))) or 1.0


def _volume_source(unit: Unit, stack: np.ndarray, ds, paths: list[str], step: float,
                   config: IngestConfig) -> Source:
    data, spacing, k_axis, k_flip = _canonical_volume(stack, ds, step)
    n = len(paths)
    slice_paths = {(n - 1 - k if k_flip else k): p for k, p in enumerate(paths)} if n > 1 else {}
    window = config.ct_window if _window(ds) else None
    return Source(unit.base_id, paths[0] if n == 1 else os.path.dirname(paths[0]), "dicom", data,
                  is_volume=True, spacing=spacing, window=window, display=True,
                  slice_paths=slice_paths, slice_paths_axis=k_axis)


def _read_multiframe(unit: Unit, ds, config: IngestConfig) -> Source:
    frames = _invert_monochrome1(_gray(_pixels(ds, config), int(ds.get("SamplesPerPixel") or 1)), ds)
    normal = _normal(ds)
    positions = [_position(ds, f, normal) for f in range(frames.shape[0])]
    order = sorted(range(len(positions)), key=lambda f: (positions[f] is None, positions[f] or 0.0, f))
    stack = frames[order]
    path = str(unit.files[0].path)
    return _volume_source(unit, stack, ds, [path], _slice_step([positions[f] for f in order]), config)


def _read_single(unit: Unit, ds, config: IngestConfig) -> Source:
    arr = _invert_monochrome1(_pixels(ds, config), ds)
    window = config.ct_window if _window(ds) else None
    return Source(unit.base_id, str(unit.files[0].path), "dicom", arr, is_volume=False,
                  spacing=_spacing(ds), window=window)


def _read_series(unit: Unit, config: IngestConfig) -> Iterator[Source | Rejected]:
    """Single-frame files of one series (already ordered) -> one volume Source."""
    first = None
    slices, paths, positions = [], [], []
    for cand in unit.files:
        try:
            ds = _read(cand.path, pixels=True)
            arr = _gray(_pixels(ds, config), int(ds.get("SamplesPerPixel") or 1))
        except QuarantineError as exc:
            yield Rejected(cand.rel, str(cand.path), "dicom", exc.reason)
            continue
        if first is None:
            first = ds
            check_pixels(arr.size * len(unit.files), config)
        slices.append(arr.astype(np.float32, copy=False))
        paths.append(str(cand.path))
        positions.append(_position(ds, 0, _normal(ds)))
    if not slices:
        return
    stack = _invert_monochrome1(np.stack(slices), first)
    del slices
    yield _volume_source(unit, stack, first, paths, _slice_step(positions), config)


def read_dicom(unit: Unit, config: IngestConfig) -> Iterator[Source | Rejected]:
    """A DICOM unit -> Sources: a 2D image (lone single-frame file, (rows, cols)) or a
    canonical volume (series or multi-frame file, (X, Y, Z) float32)."""
    if len(unit.files) > 1:
        yield from _read_series(unit, config)
        return
    ds = _read(unit.files[0].path, pixels=True)
    frames = int(ds.get("NumberOfFrames") or 1)
    yield _read_multiframe(unit, ds, config) if frames > 1 else _read_single(unit, ds, config)
