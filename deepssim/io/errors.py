"""Quarantine reasons and the exception that carries one.

A reader that cannot turn a file (or one array/slice of it) into images raises
:class:`QuarantineError` with one of the reasons below; ingestion records the reason in
the manifest and carries on with the next file.  Reasons are short, stable strings (the
report groups by them), never contain exception text from third-party readers (a DICOM
parser's message may quote element values, i.e. patient data) and never contain DICOM
identifiers.
"""
from __future__ import annotations


class QuarantineError(Exception):
    """A file, array or slice that must not be audited; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# Filesystem
EMPTY_FILE = "empty file (0 bytes)"
BROKEN_SYMLINK = "broken symlink"
EXTERNAL_SYMLINK = "symlink points outside the audited root"
OUTSIDE_ROOT = "path outside the audited root"
SYMLINK_LOOP = "symlink loop"
NOT_REGULAR = "not a regular file (FIFO, socket or device)"
PERMISSION_DENIED = "unreadable file: permission denied"
UNREADABLE = "unreadable file: {error}"
MISSING = "file not found"

# Format
UNKNOWN_FORMAT = "not a recognised image format"
NON_IMAGE = "non-image file"
TRUNCATED_GZIP = "truncated gzip stream"
CORRUPT_GZIP = "corrupt gzip stream"
TRUNCATED = "truncated file"
CORRUPT = "corrupt {format} file"
UNEXPECTED = "unexpected read error ({error})"
TRUNCATED_COMPRESSED = "truncated compressed voxel data"
CORRUPT_COMPRESSED = "corrupt compressed voxel data"
UNSUPPORTED_ENCODING = "unsupported voxel encoding {encoding}"

# Header + voxel formats (NRRD, MetaImage, MGH)
BAD_HEADER = "invalid {format} header: {problem}"
DETACHED_MISSING = "detached data file not found in the audited folder"
DETACHED_OUTSIDE = "detached data file outside the audited folder"
DETACHED_UNUSABLE = "detached data file: {reason}"
DETACHED_LAYOUT = "unsupported detached data layout (file list or pattern)"
ORPHAN_DATA = "voxel data file without its header (.nhdr/.mhd)"

# DICOM
DICOM_NO_PIXELS = "DICOM without pixel data"
DICOM_UNDECODABLE = "DICOM pixel data cannot be decoded ({syntax})"
DICOM_SHAPE_MISMATCH = "DICOM slice shape differs from the rest of its series"

# Content
ALL_NAN = "all-NaN volume"
ALL_NAN_IMAGE = "all-NaN image"
NEED_VOLUME_INDEX = "4D volume: choose a volume index"
VOLUME_INDEX_RANGE = "4D volume: volume index {index} out of range (0..{last})"
TOO_MANY_DIMS = "unsupported array dimensions: {shape}"
TOO_SMALL = "image smaller than {side}×{side}"
TOO_LARGE_PIXELS = "image too large: {pixels} pixels > limit {limit}"
TOO_LARGE_BYTES = "file too large: {size} bytes > limit {limit}"
CONSTANT_IMAGE = "constant image"
CONSTANT_VOLUME = "constant volume"
NEAR_EMPTY_IMAGE = "near-empty image (foreground {fraction:.3f} < {threshold:.3f})"
NO_FOREGROUND_SLICE = "no slice above the foreground threshold"
UNSUPPORTED_DTYPE = "unsupported pixel type {dtype}"
