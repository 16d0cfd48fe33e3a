"""NRRD reader (``.nrrd``, and ``.nhdr`` with a detached data file).

The header is parsed by pynrrd (``nrrd.read_header``: the field grammar, vectors and
matrices of ``space directions``); the voxels are read by :mod:`deepssim.io.payload`, which
reads no more than the header's sizes promise — pynrrd's own data reader inflates a whole
compressed block and opens whatever path a header names.  A detached data file is only read
when the ingestion plan found it inside the audited folder (``unit.files[1]``).

Orientation: ``space directions`` (one world vector per axis, spacing included) and
``space origin`` in the header's ``space`` (LPS, RAS or LAS, with or without ``-time``;
``scanner-xyz``/``3D-right-handed`` taken as RAS) become a voxel→RAS affine; an axis
without a direction (``none``: a vector, list or time axis) is not spatial and is chosen
with ``IngestConfig.volume_index``.  A header without directions keeps the array axes
(as a NIfTI file with an identity affine would), scaled by ``spacings``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import IngestConfig
from . import errors
from .errors import QuarantineError
from .orientation import LPS_TO_RAS, oriented_volume
from .payload import Payload, read_payload
from .quiet import quiet
from .sources import Source, Unit, check_pixels

HEADER_LIMIT = 1 << 20
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
              "ascii": "text", "text": "text", "txt": "text"}
_RAS, _LAS = np.eye(3), np.diag([-1.0, 1.0, 1.0])
_SPACES = {"right-anterior-superior": _RAS, "ras": _RAS, "scanner-xyz": _RAS, "3d-right-handed": _RAS,
           "left-anterior-superior": _LAS, "las": _LAS,
           "left-posterior-superior": LPS_TO_RAS, "lps": LPS_TO_RAS}


def _bad(problem: str) -> QuarantineError:
    return QuarantineError(errors.BAD_HEADER.format(format="NRRD", problem=problem))


def read_header(path: Path) -> tuple[dict, int | None]:
    """(pynrrd header dict, byte offset of attached data or None for a header-only file)."""
    import nrrd

    with open(path, "rb") as f:
        head = f.read(HEADER_LIMIT + 1)
    end = _BLANK_LINE.search(head)
    if end is None and len(head) > HEADER_LIMIT:
        raise _bad("no end of header in the first 1 MiB")
    text = head[: end.start()] if end else head
    try:
        with quiet("nrrd"):
            header = nrrd.read_header(text.decode("ascii", "ignore").splitlines())
    except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, KeyError...
        raise _bad("unparsable field") from exc
    return dict(header), (end.end() if end else None)


def detached_files(path: Path) -> list[str]:
    """Names of the data files a header points to (relative to its folder); [] if attached."""
    header, _ = read_header(path)
    name = header.get("data file", header.get("datafile"))
    if name is None:
        return []
    if not isinstance(name, str) or name.upper().startswith("LIST") or " " in name.strip():
        raise QuarantineError(errors.DETACHED_LAYOUT)
    return [name.strip()]


def _dtype(header: dict) -> np.dtype:
    from nrrd.reader import _TYPEMAP_NRRD2NUMPY  # pynrrd's table of NRRD type names

    code = _TYPEMAP_NRRD2NUMPY.get(str(header.get("type", "")))
    if code is None:
        raise _bad("unsupported type")
    dtype = np.dtype(code)
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if str(header.get("endian", "little")) == "big" else "<")
    return dtype


def _sizes(header: dict) -> list[int]:
    try:
        sizes = [int(s) for s in np.atleast_1d(header["sizes"])]
        dimension = int(header["dimension"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad("sizes") from exc
    if len(sizes) != dimension or not 1 <= dimension <= 5 or min(sizes) < 1:
        raise _bad("sizes")
    return sizes


def _payload(header: dict, offset: int | None, unit: Unit, dtype: np.dtype, count: int) -> Payload:
    encoding = _ENCODINGS.get(str(header.get("encoding", "")).lower())
    if encoding is None:
        raise QuarantineError(errors.UNSUPPORTED_ENCODING.format(encoding="NRRD"))
    detached = "data file" in header or "datafile" in header
    if detached and len(unit.files) < 2:
        raise QuarantineError(errors.DETACHED_MISSING)
    path = unit.files[1].path if detached else unit.files[0].path
    start = 0 if detached else offset
    if start is None:
        raise _bad("no voxel data")
    start = _skip_lines(path, start, int(header.get("line skip", header.get("lineskip", 0))))
    skip = int(header.get("byte skip", header.get("byteskip", 0)))
    if skip < -1:
        raise _bad("byte skip")
    if encoding == "raw":
        return Payload(path, dtype, count, -1 if skip == -1 else start + skip, encoding)
    if skip == -1:
        raise QuarantineError(errors.UNSUPPORTED_ENCODING.format(encoding="compressed, byte skip -1"))
    return Payload(path, dtype, count, start, encoding, skip=skip)


def _skip_lines(path: Path, start: int, lines: int) -> int:
    if lines < 0 or lines > 10_000:
        raise _bad("line skip")
    if lines == 0:
        return start
    with open(path, "rb") as f:
        f.seek(start)
        for _ in range(lines):
            f.readline(HEADER_LIMIT)
        return f.tell()


def _frame(header: dict, ndim: int) -> tuple[list[bool], np.ndarray, np.ndarray, np.ndarray]:
    """(spatial axis flags, (n_spatial, 3) directions, origin, world→RAS)."""
    directions = header.get("space directions")
    if directions is None:
        kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * ndim)]
        spatial = [k in ("domain", "space") for k in kinds][:ndim] if len(kinds) == ndim else [True] * ndim
        spacings = np.nan_to_num(np.asarray(header.get("spacings", [1.0] * ndim), float), nan=1.0)
        steps = np.zeros((ndim, 3))
        for row, axis in enumerate(np.flatnonzero(spatial)[:3]):
            steps[axis, row] = spacings[axis] if spacings.shape == (ndim,) else 1.0
        return spatial, steps[spatial], np.zeros(3), np.eye(3)
    directions = np.asarray(directions, float)
    if directions.ndim != 2 or directions.shape[0] != ndim or directions.shape[1] < 2:
        raise _bad("space directions")
    world = np.zeros((ndim, 3))
    world[:, : min(3, directions.shape[1])] = np.nan_to_num(directions[:, :3], nan=0.0)
    spatial = [bool(np.any(row != 0)) for row in world]
    space = str(header.get("space", "right-anterior-superior")).lower().removesuffix("-time")
    if space not in _SPACES:
        raise _bad("unsupported space")
    origin = np.zeros(3)
    given = np.nan_to_num(np.asarray(header.get("space origin", np.zeros(3)), float).ravel(), nan=0.0)
    origin[: min(3, given.size)] = given[:3]
    return spatial, world[spatial], origin, _SPACES[space]


def read_nrrd(unit: Unit, config: IngestConfig) -> Iterator[Source]:
    """One NRRD header (+ data file) -> one volume Source (X, Y, Z) in canonical RAS order."""
    path = unit.files[0].path
    header, offset = read_header(path)
    sizes = _sizes(header)
    count = math.prod(sizes)
    check_pixels(count, config)
    dtype = _dtype(header)
    flat = read_payload(_payload(header, offset, unit, dtype, count))
    data = flat.reshape(sizes[::-1]).T  # NRRD's first axis varies fastest
    volume, spacing = oriented_volume(data, *_frame(header, len(sizes)), config)
    yield Source(unit.base_id, str(path), "nrrd", volume, is_volume=True, spacing=spacing, display=True,
                 may_be_hu=True)
