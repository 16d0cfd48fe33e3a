"""Ingestion: files and folders -> a manifest and an ``.npy`` of model inputs.

``ingest`` walks the inputs (see :mod:`deepssim.io.discover`), decides each file's format
from its content (:mod:`deepssim.io.sniff`), groups DICOM files into series, reads one unit
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
from ..preprocess import pad_to_square, resize
from . import dicom, errors
from .arrays import read_npy, read_npz
from .discover import Candidate, default_root, discover
from .errors import QuarantineError
from .nifti import read_nifti
from .npywriter import NpyAppender
from .raster import read_pil, read_tiff
from .slicing import Slice, iter_slices, raw_sha256
from .sniff import HEAD_BYTES, detect_format
from .sources import Rejected, Source, Unit

log = logging.getLogger(__name__)

Reader = Callable[[Unit, IngestConfig], Iterator["Source | Rejected"]]

READERS: dict[str, Reader] = {
    "nifti": read_nifti,
    "dicom": dicom.read_dicom,
    "png": read_pil,
    "jpeg": read_pil,
    "tiff": read_tiff,
    "npy": read_npy,
    "npz": read_npz,
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
    return np.clip(resize(pad_to_square(unit), size), 0.0, 1.0)


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


def _plan(cands: list[Candidate]) -> tuple[list[Unit], list[dict]]:
    """Sniff every candidate and group them into reader units; returns (units, rows)."""
    rows: list[dict] = []
    by_format: dict[str, list[Candidate]] = {}
    for cand in cands:
        try:
            if cand.reason:
                raise QuarantineError(cand.reason)
            by_format.setdefault(_sniff(cand), []).append(cand)
        except QuarantineError as exc:
            rows.append(_quarantine_row(cand.rel, str(cand.path), None, exc.reason))
        except Exception as exc:  # a sniffer bug must not stop the run
            rows.append(_quarantine_row(cand.rel, str(cand.path), None,
                                        errors.UNEXPECTED.format(error=type(exc).__name__)))
    units: list[Unit] = []
    for fmt, group in by_format.items():
        if fmt == "dicom":
            dicom_units, rejected = dicom.plan_units(group)
            units += dicom_units
            rows += [_quarantine_row(c.rel, str(c.path), "dicom", r) for c, r in rejected]
        else:
            units += [Unit(fmt, [c], c.rel) for c in group]
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
    units, rows = _plan(cands)
    total = len(cands)
    done = total - sum(len(u.files) for u in units)
    if progress and done:
        progress(done, total)
    writer = NpyAppender(work_dir / PIXELS_FILE, size)
    sink = _Sink(writer, size)
    try:
        for unit in units:
            _ingest_unit(unit, config, sink)
            for _ in unit.files:
                done += 1
                if progress:
                    progress(done, total)
    except BaseException:
        writer.abort()
        raise
    pixels_path = writer.close()
    manifest = _frame(sink.rows + rows)
    return IngestResult(manifest, pixels_path, root)
