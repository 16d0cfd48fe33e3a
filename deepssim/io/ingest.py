"""Ingestion: files and folders -> a manifest and an ``.npy`` of model inputs.

``ingest`` walks the inputs (see :mod:`deepssim.io.discover`), decides each file's format
from its content (:mod:`deepssim.io.sniff`), groups DICOM files into series and a detached
header (.nhdr, .mhd) with its data file, reads one unit
(a file or a series) at a time through the reader registry :data:`READERS`, cuts volumes
into 2D slices and windows them (:mod:`deepssim.io.slicing`), and streams every accepted
image, preprocessed to ``(size, size)`` float16 in [0, 1], into ``work_dir/pixels.npy``.
Only one volume is in memory at a time.

Every problem with one file becomes a quarantined manifest row with a specific reason
(:mod:`deepssim.io.errors`); no exception raised while reading a file escapes ``ingest``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..config import IngestConfig
from ..preprocess import square_resize
from . import dicom, errors, metaimage, nrrd
from .arrays import read_npy, read_npz
from .discover import Candidate, default_root, discover
from .errors import QuarantineError
from .nifti import read_nibabel
from .npywriter import NpyAppender
from .raster import read_pil, read_tiff
from .slicing import Slice, iter_slices, raw_sha256
from .sniff import HEAD_BYTES, detect_format
from .sources import Rejected, Source, Unit

log = logging.getLogger(__name__)

Reader = Callable[[Unit, IngestConfig], Iterator["Source | Rejected"]]

READERS: dict[str, Reader] = {
    "nifti": read_nibabel,
    "mgh": read_nibabel,
    "nrrd": nrrd.read_nrrd,
    "metaimage": metaimage.read_metaimage,
    "dicom": dicom.read_dicom,
    "png": read_pil,
    "jpeg": read_pil,
    "tiff": read_tiff,
    "npy": read_npy,
    "npz": read_npz,
}

# Formats whose header may name a separate voxel file: header path -> names in the header
DETACHED: dict[str, Callable[[Path], list[str]]] = {
    "nrrd": nrrd.detached_files,
    "metaimage": metaimage.detached_files,
}

MANIFEST_COLUMNS = [
    "image_id", "source_path", "format", "orig_shape", "spacing", "dtype", "intensity_min",
    "intensity_max", "nan_fraction", "foreground_fraction", "sha256", "status", "reason",
    "volume_id", "slice_axis", "slice_index", "row",
]

PIXELS_FILE = "pixels.npy"


@dataclass
class IngestResult:
    """``manifest``: one row per accepted image and per quarantined file/part (columns
    :data:`MANIFEST_COLUMNS`, ``row`` indexes ``pixels_path``, -1 when quarantined).
    ``pixels_path``: float16 ``(N_ok, size, size)`` in [0, 1].  ``root``: what ids are
    relative to."""

    manifest: pd.DataFrame
    pixels_path: Path
    root: Path

    @property
    def ok(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == "ok"]

    @property
    def quarantined(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == "quarantined"]

    def pixels(self) -> np.ndarray:
        """The pixel array, memory-mapped read-only."""
        return np.load(self.pixels_path, mmap_mode="r")


def _fmt_tuple(values) -> str | None:
    return None if values is None else "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _quarantine_row(image_id: str, source_path: str, fmt: str | None, reason: str) -> dict:
    log.info("quarantined %s: %s", image_id, reason)
    return {"image_id": image_id, "source_path": source_path, "format": fmt or "unknown",
            "status": "quarantined", "reason": reason, "slice_index": -1, "row": -1}


def _ok_row(s: Slice, row: int) -> dict:
    return {"image_id": s.image_id, "source_path": s.source_path, "format": s.format,
            "orig_shape": _fmt_tuple(s.raw.shape), "spacing": _fmt_tuple(s.spacing),
            "dtype": str(s.raw.dtype), "intensity_min": s.intensity_min, "intensity_max": s.intensity_max,
            "nan_fraction": s.nan_fraction, "foreground_fraction": s.foreground_fraction,
            "sha256": raw_sha256(s.raw), "status": "ok", "reason": None, "volume_id": s.volume_id,
            "slice_axis": s.axis, "slice_index": s.index, "row": row}


def model_input(unit: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float32 in [0, 1] -> (size, size) float32 in [0, 1] (zero-pad, bilinear)."""
    return np.clip(square_resize(unit, size), 0.0, 1.0)


def _sniff(cand: Candidate) -> str:
    """Format of a candidate from its first bytes; raises QuarantineError."""
    try:
        with open(cand.path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except PermissionError as exc:
        raise QuarantineError(errors.PERMISSION_DENIED) from exc
    except IsADirectoryError as exc:
        raise QuarantineError(errors.NOT_REGULAR) from exc
    except OSError as exc:
        raise QuarantineError(errors.UNREADABLE.format(error=exc.strerror or type(exc).__name__)) from exc
    return detect_format(cand.path, head)


def _sniff_all(cands: list[Candidate]) -> tuple[dict[str, list[Candidate]], dict[str, dict]]:
    """Format of every candidate: (format -> candidates, rel -> quarantine row)."""
    by_format: dict[str, list[Candidate]] = {}
    rejected: dict[str, dict] = {}
    for cand in cands:
        try:
            if cand.reason:
                raise QuarantineError(cand.reason)
            by_format.setdefault(_sniff(cand), []).append(cand)
        except QuarantineError as exc:
            rejected[cand.rel] = _quarantine_row(cand.rel, str(cand.path), None, exc.reason)
        except Exception as exc:  # a sniffer bug must not stop the run
            rejected[cand.rel] = _quarantine_row(cand.rel, str(cand.path), None,
                                                 errors.UNEXPECTED.format(error=type(exc).__name__))
    return by_format, rejected


def _data_candidate(header: Candidate, name: str, found: dict[str, Candidate], root: Path,
                    config: IngestConfig) -> Candidate:
    """The candidate a header's data file name refers to; raises QuarantineError when it is
    missing, outside the audited root or itself unreadable."""
    if not name or os.path.isabs(name):
        raise QuarantineError(errors.DETACHED_OUTSIDE)
    path = Path(os.path.normpath(header.path.parent / name))
    cand = found.get(path.as_posix())
    if cand is None:  # a header audited on its own: its data file was not walked
        if not path.exists() and not path.is_symlink():
            raise QuarantineError(errors.DETACHED_MISSING)
        cand = discover([path], root, config)[0]
    if cand.reason in (errors.OUTSIDE_ROOT, errors.EXTERNAL_SYMLINK):
        raise QuarantineError(errors.DETACHED_OUTSIDE)
    if cand.reason:
        raise QuarantineError(errors.DETACHED_UNUSABLE.format(reason=cand.reason))
    return cand


def _detached_units(fmt: str, group: list[Candidate], found: dict[str, Candidate], root: Path,
                    config: IngestConfig) -> tuple[list[Unit], list[dict], set[str]]:
    """Units of header files with their data files: (units, quarantine rows, claimed rels)."""
    units, rows, claimed = [], [], set()
    for cand in group:
        try:
            data = [_data_candidate(cand, name, found, root, config) for name in DETACHED[fmt](cand.path)]
        except QuarantineError as exc:
            rows.append(_quarantine_row(cand.rel, str(cand.path), fmt, exc.reason))
            continue
        except Exception as exc:  # noqa: BLE001 - a header parser bug must not stop the run
            rows.append(_quarantine_row(cand.rel, str(cand.path), fmt,
                                        errors.UNEXPECTED.format(error=type(exc).__name__)))
            continue
        claimed.update(d.rel for d in data)
        units.append(Unit(fmt, [cand, *data], cand.rel))
    return units, rows, claimed


def _plan(cands: list[Candidate], root: Path, config: IngestConfig) -> tuple[list[Unit], list[dict]]:
    """Sniff every candidate and group them into reader units; returns (units, rows).

    A data file named by a header (.nhdr, .mhd) joins its header's unit instead of being
    read (or quarantined) on its own."""
    by_format, rejected = _sniff_all(cands)
    found = {c.path.as_posix(): c for c in cands}
    units: list[Unit] = []
    rows: list[dict] = []
    claimed: set[str] = set()
    for fmt, group in by_format.items():
        if fmt == "dicom":
            dicom_units, bad = dicom.plan_units(group)
            units += dicom_units
            rows += [_quarantine_row(c.rel, str(c.path), "dicom", r) for c, r in bad]
        elif fmt in DETACHED:
            more, bad, taken = _detached_units(fmt, group, found, root, config)
            units, rows, claimed = units + more, rows + bad, claimed | taken
        else:
            units += [Unit(fmt, [c], c.rel) for c in group]
    units = [u for u in units if u.base_id not in claimed or u.format in DETACHED]
    rows += [row for rel, row in rejected.items() if rel not in claimed]
    units.sort(key=lambda u: u.base_id)
    return units, rows


class _Sink:
    """Collects manifest rows and streams accepted images into the pixel file."""

    def __init__(self, writer: NpyAppender, size: int):
        self.writer, self.size, self.rows = writer, size, []

    def quarantine(self, image_id: str, source_path: str, fmt: str | None, reason: str) -> None:
        self.rows.append(_quarantine_row(image_id, source_path, fmt, reason))

    def accept(self, s: Slice) -> None:
        row = self.writer.append(model_input(s.unit, self.size))
        self.rows.append(_ok_row(s, row))


def _ingest_unit(unit: Unit, config: IngestConfig, sink: _Sink) -> None:
    """Read one unit; every failure becomes a quarantine row."""
    path = str(unit.files[0].path)
    try:
        for item in READERS[unit.format](unit, config):
            if isinstance(item, Rejected):
                sink.quarantine(item.image_id, item.source_path, item.format, item.reason)
                continue
            for s in iter_slices(item, config):
                if isinstance(s, Rejected):
                    sink.quarantine(s.image_id, s.source_path, s.format, s.reason)
                else:
                    sink.accept(s)
            del item
    except QuarantineError as exc:
        sink.quarantine(unit.base_id, path, unit.format, exc.reason)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop an audit
        # Only the type: a parser's message may quote header values (patient data).
        log.debug("reader failure on %s: %s", unit.base_id, type(exc).__name__)
        sink.quarantine(unit.base_id, path, unit.format, errors.UNEXPECTED.format(error=type(exc).__name__))


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("intensity_min", "intensity_max", "nan_fraction", "foreground_fraction"):
        df[col] = df[col].astype("float64")
    df["slice_index"] = df["slice_index"].fillna(-1).astype("int64")
    df["row"] = df["row"].fillna(-1).astype("int64")
    return df


def ingest(paths: Sequence[Path], config: IngestConfig, size: int, work_dir: Path,
           root: Path | None = None,
           progress: Callable[[int, int], None] | None = None) -> IngestResult:
    """Read every image under ``paths`` into a manifest and ``work_dir/pixels.npy``.

    ``paths``: files and/or folders (walked recursively).  ``root``: ids are POSIX paths
    relative to it; default: the folder itself when one folder is given, else the common
    parent.  ``size``: side S of the model input.  ``progress(done, total)`` is called after
    each file.  Returns an :class:`IngestResult` whose pixel file holds (N_ok, S, S) float16.
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    root = Path(os.path.abspath(root)) if root is not None else default_root(paths)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cands = discover(paths, root, config)
    units, rows = _plan(cands, root, config)
    total = len(cands)
    done = max(0, total - sum(len(u.files) for u in units))
    if progress and done:
        progress(done, total)
    writer = NpyAppender(work_dir / PIXELS_FILE, size)
    sink = _Sink(writer, size)
    try:
        for unit in units:
            _ingest_unit(unit, config, sink)
            for _ in unit.files:
                done = min(done + 1, total)
                if progress:
                    progress(done, total)
    except BaseException:
        writer.abort()
        raise
    pixels_path = writer.close()
    manifest = _frame(sink.rows + rows)
    return IngestResult(manifest, pixels_path, root)
