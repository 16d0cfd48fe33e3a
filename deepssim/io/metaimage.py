"""MetaImage reader (``.mha``, and ``.mhd`` with a detached ``.raw``/``.zraw`` file).

MetaImage (ITK's MetaIO format) is a short ``Key = Value`` text header that ends with
``ElementDataFile``; the voxels follow it (``LOCAL``) or lie in the named file.  The header
is a dozen keys, so it is parsed here rather than through SimpleITK (a 260 MB C++ install
whose reader would allocate what a damaged header claims); the voxels are read within the
header's bounds by :mod:`deepssim.io.payload`.

Orientation: ``TransformMatrix`` lists each voxel axis's direction in turn (ITK writes axis
0's unit vector first), ``ElementSpacing`` scales them, ``Offset`` is the first voxel's
centre; MetaImage world coordinates are LPS.  Keys are matched case-insensitively, with
MetaIO's synonyms (``Origin``/``Position`` for ``Offset``, ``Rotation``/``Orientation``
for ``TransformMatrix``, ``ElementSize`` when ``ElementSpacing`` is absent).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import IngestConfig
from . import errors
from .errors import QuarantineError
from .orientation import LPS_TO_RAS, oriented_volume
from .payload import Payload, read_payload
from .sources import Source, Unit, check_pixels

HEADER_LIMIT = 1 << 20
# MetaIO's element types; MET_LONG is 4 bytes in MetaIO whatever the platform's long is
ELEMENT_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
HEADER_KEYS = ("objecttype", "ndims", "objectsubtype", "comment", "dimsize", "elementtype", "transformtype")


def _bad(problem: str) -> QuarantineError:
    return QuarantineError(errors.BAD_HEADER.format(format="MetaImage", problem=problem))


def read_header(path: Path) -> tuple[dict[str, str], int]:
    """(lower-cased key -> value, byte offset just after the ``ElementDataFile`` line)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_LIMIT)
    fields: dict[str, str] = {}
    offset = 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            if raw.strip():
                raise _bad("line without '='")
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            return fields, offset
    raise _bad("no ElementDataFile line")


def detached_files(path: Path) -> list[str]:
    """Names of the data files a header points to (relative to its folder); [] if LOCAL."""
    name = read_header(path)[0]["elementdatafile"]
    if name.upper() == "LOCAL":
        return []
    if name.upper().startswith("LIST") or "%" in name:
        raise QuarantineError(errors.DETACHED_LAYOUT)
    return [name]


def _numbers(fields: dict[str, str], keys: tuple[str, ...], n: int, default: list[float]) -> np.ndarray:
    for key in keys:
        if key in fields:
            try:
                values = np.array([float(v) for v in fields[key].split()], float)
            except ValueError as exc:
                raise _bad(key) from exc
            if values.size != n or not np.all(np.isfinite(values)):
                raise _bad(key)
            return values
    return np.asarray(default, float)


def _flag(fields: dict[str, str], *keys: str) -> bool:
    return any(fields.get(k, "").strip().lower() in ("true", "1") for k in keys)


def _shape(fields: dict[str, str]) -> tuple[int, list[int], int]:
    """(NDims, DimSize, channels per voxel)."""
    try:
        ndims = int(fields["ndims"])
        dims = [int(v) for v in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except (KeyError, ValueError) as exc:
        raise _bad("NDims/DimSize") from exc
    if not 2 <= ndims <= 4 or len(dims) != ndims or min(dims) < 1 or not 1 <= channels <= 64:
        raise _bad("NDims/DimSize")
    return ndims, dims, channels


def _dtype(fields: dict[str, str]) -> np.dtype:
    code = ELEMENT_TYPES.get(fields.get("elementtype", "").upper())
    if code is None:
        raise _bad("unsupported ElementType")
    msb = _flag(fields, "binarydatabyteordermsb", "elementbyteordermsb")
    return np.dtype(code).newbyteorder(">" if msb else "<")


def _payload(fields: dict[str, str], offset: int, unit: Unit, dtype: np.dtype, count: int) -> Payload:
    encoding = "gzip" if _flag(fields, "compresseddata") else "raw"
    if fields.get("binarydata", "true").strip().lower() in ("false", "0"):
        encoding = "text"
    detached = fields["elementdatafile"].upper() != "LOCAL"
    if detached and len(unit.files) < 2:
        raise QuarantineError(errors.DETACHED_MISSING)
    if not detached:
        return Payload(unit.files[0].path, dtype, count, offset, encoding)
    try:
        skip = int(fields.get("headersize", "0"))
    except ValueError as exc:
        raise _bad("HeaderSize") from exc
    if skip < -1:
        raise _bad("HeaderSize")
    return Payload(unit.files[1].path, dtype, count, skip, encoding)


def read_metaimage(unit: Unit, config: IngestConfig) -> Iterator[Source]:
    """One MetaImage header (+ data file) -> one volume Source (X, Y, Z) in canonical RAS order."""
    path = unit.files[0].path
    fields, offset = read_header(path)
    ndims, dims, channels = _shape(fields)
    count = math.prod(dims) * channels
    check_pixels(count, config)
    flat = read_payload(_payload(fields, offset, unit, _dtype(fields), count))
    data = flat.reshape(dims[::-1] + [channels]).T  # channels vary fastest, then x, y, ...
    n_space = min(ndims, 3)
    spacing = _numbers(fields, ("elementspacing", "elementsize"), ndims, [1.0] * ndims)
    matrix = _numbers(fields, ("transformmatrix", "rotation", "orientation"), ndims * ndims,
                      list(np.eye(ndims).ravel())).reshape(ndims, ndims)
    origin = _numbers(fields, ("offset", "origin", "position"), ndims, [0.0] * ndims)
    steps = np.zeros((n_space, 3))
    with np.errstate(all="ignore"):
        steps[:, :n_space] = matrix[:n_space, :n_space] * spacing[:n_space, None]
    spatial = [False] + [True] * n_space + [False] * (ndims - n_space)
    world_origin = np.zeros(3)
    world_origin[:n_space] = origin[:n_space]
    volume, mm = oriented_volume(data, spatial, steps, world_origin, LPS_TO_RAS, config)
    yield Source(unit.base_id, str(path), "metaimage", volume, is_volume=True, spacing=mm, display=True,
                 may_be_hu=True)
