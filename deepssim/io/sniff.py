"""Decide a file's format from its first bytes, with the extension only as a hint.

Content wins over the name: a PNG called ``scan.dcm`` is read as a PNG, a text file called
``scan.png`` is quarantined.  The extension only decides between "an image that is broken"
(:data:`~deepssim.io.errors.UNKNOWN_FORMAT`) and "not an image at all"
(:data:`~deepssim.io.errors.NON_IMAGE`), and lets a DICOM file without the standard
128-byte preamble be tried.
"""
from __future__ import annotations

import gzip
import re
import struct
import zipfile
import zlib
from pathlib import Path

from . import errors
from .errors import QuarantineError

HEAD_BYTES = 1024

IMAGE_SUFFIXES = {
    ".nii": "nifti", ".nii.gz": "nifti", ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
    ".npy": "npy", ".npz": "npz", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage",
    ".mhd": "metaimage", ".mgh": "mgh", ".mgz": "mgh",
}
# Voxel blocks of a detached header (.nhdr, .mhd); read through their header only.
DATA_SUFFIXES = {".raw", ".zraw", ".raw.gz"}


def suffix_of(path: Path) -> str:
    """Lower-case extension, with ``.nii.gz`` kept whole."""
    name = path.name.lower()
    for double in (".nii.gz", ".raw.gz"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def _is_nifti_header(head: bytes) -> bool:
    if len(head) < 348:
        return False
    sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
    if 348 in sizes and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return 540 in sizes and head[4:8] in (b"n+2\x00", b"ni2\x00")


# FreeSurfer MGH: big-endian int32 version 1, width, height, depth, frames, type (uchar,
# int, float, short); no magic, so all six fields must be plausible.
_MGH_TYPES = {0, 1, 3, 4}


def _is_mgh_header(head: bytes) -> bool:
    if len(head) < 284:
        return False
    version, *dims, frames, kind = struct.unpack(">7i", head[:28])
    return version == 1 and all(0 < d <= 1 << 16 for d in dims) and 0 < frames <= 1 << 16 and kind in _MGH_TYPES


_METAIMAGE_KEY = re.compile(rb"\s*(ObjectType|NDims|ObjectSubType|Comment|DimSize|ElementType|TransformType)\s*=",
                            re.IGNORECASE)


def _is_metaimage_header(head: bytes) -> bool:
    return _METAIMAGE_KEY.match(head) is not None and b"ndims" in head.lower()


def _gunzip_head(path: Path) -> bytes:
    """First bytes of a gzip stream; a stream too short to hold them is truncated."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except EOFError as exc:
        raise QuarantineError(errors.TRUNCATED_GZIP) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise QuarantineError(errors.CORRUPT_GZIP) from exc


def _sniff_gzip(path: Path, head: bytes) -> str | None:
    inner = _gunzip_head(path)
    if _is_nifti_header(inner):
        return "nifti"
    return "mgh" if _is_mgh_header(inner) else None


def _sniff_zip(path: Path, head: bytes) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise QuarantineError(errors.CORRUPT.format(format="zip/npz")) from exc
    return "npz" if names and all(n.endswith(".npy") for n in names) else None


# Magic bytes -> format, or -> a function that looks inside a container.
_MAGIC = [
    (128, b"DICM", "dicom"),  # first: the 128-byte preamble may itself hold TIFF magic
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"II+\x00", "tiff"),
    (0, b"MM\x00+", "tiff"),
    (0, b"\x93NUMPY", "npy"),
    (0, b"PK\x03\x04", _sniff_zip),
    (0, b"\x1f\x8b", _sniff_gzip),
    (0, b"NRRD000", "nrrd"),
]


def _looks_like_dicom_without_preamble(head: bytes) -> bool:
    """Raw DICOM data sets (no preamble, no "DICM") start with a group 0x0002 or 0x0008
    tag, in either byte order; only trusted for files named like DICOM."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def detect_format(path: Path, head: bytes) -> str:
    """Format name (a key of the reader registry) of ``path`` whose first bytes are ``head``.

    Raises :class:`QuarantineError` when the content is not a supported image format.
    """
    if not head:
        raise QuarantineError(errors.EMPTY_FILE)
    for offset, magic, kind in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            found = kind(path, head) if callable(kind) else kind
            if found is not None:
                return found
            break
    if _is_nifti_header(head):
        return "nifti"
    if _is_mgh_header(head):
        return "mgh"
    if _is_metaimage_header(head):
        return "metaimage"
    hint = IMAGE_SUFFIXES.get(suffix_of(path))
    if hint == "dicom" and _looks_like_dicom_without_preamble(head):
        return "dicom"
    if suffix_of(path) in DATA_SUFFIXES:
        raise QuarantineError(errors.ORPHAN_DATA)
    raise QuarantineError(errors.UNKNOWN_FORMAT if hint else errors.NON_IMAGE)
