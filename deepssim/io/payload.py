"""Reading the voxel block that a text header (NRRD, MetaImage) describes, within bounds.

The header says how many voxels of which type follow, where and how they are encoded;
this module reads exactly that many bytes and never more: a raw block is read with one
``np.fromfile(count=...)``, a compressed one is inflated only up to the size the header
promises (so a small "zip bomb" cannot expand past it), and text is parsed only up to the
file size limit the walker already enforced.  The caller checks the voxel count against
``IngestConfig.max_pixels`` *before* calling, so a header claiming a 30,000³ volume is
refused without allocating anything.
"""
from __future__ import annotations

import bz2
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import errors
from .errors import QuarantineError

_CHUNK = 1 << 20
_TRAILING_LIMIT = 1 << 20
# zlib's automatic header detection (zlib or gzip wrapper), as MetaIO and ITK read it
_ZLIB_OR_GZIP = zlib.MAX_WBITS | 32
ENCODINGS = ("raw", "gzip", "bzip2", "text")


@dataclass(frozen=True)
class Payload:
    """Where and how a voxel block is stored.

    ``offset``: bytes before the block (before decompression), or -1: the block is the
    last bytes of the file (raw only).  ``skip``: bytes to drop *after* decompression
    (NRRD ``byte skip`` of a compressed block).  ``encoding``: one of :data:`ENCODINGS`.
    """

    path: Path
    dtype: np.dtype
    count: int
    offset: int = 0
    encoding: str = "raw"
    skip: int = 0


def read_payload(p: Payload) -> np.ndarray:
    """``p.count`` values of ``p.dtype`` as a flat array; raises :class:`QuarantineError`
    (truncated, corrupt or unsupported block)."""
    n_bytes = p.count * p.dtype.itemsize
    if p.encoding == "raw":
        return _read_raw(p, n_bytes)
    if p.encoding == "text":
        return _read_text(p)
    if p.encoding not in ENCODINGS or p.offset < 0:
        raise QuarantineError(errors.UNSUPPORTED_ENCODING.format(encoding=p.encoding))
    data = _inflate(p.path, p.offset, p.skip + n_bytes, p.encoding)[p.skip:]
    return np.frombuffer(data, p.dtype, count=p.count)


def _read_raw(p: Payload, n_bytes: int) -> np.ndarray:
    size = p.path.stat().st_size
    offset = size - n_bytes if p.offset < 0 else p.offset
    if offset < 0 or offset + n_bytes > size:
        raise QuarantineError(errors.TRUNCATED)
    with open(p.path, "rb") as f:
        return np.fromfile(f, p.dtype, count=p.count, offset=offset)


def _read_text(p: Payload) -> np.ndarray:
    with open(p.path, "rb") as f:
        f.seek(max(p.offset, 0))
        words = f.read().split()
    if len(words) < p.count:
        raise QuarantineError(errors.TRUNCATED)
    try:
        return np.array(words[:p.count], dtype=np.float64).astype(p.dtype)
    except (ValueError, OverflowError) as exc:
        raise QuarantineError(errors.CORRUPT.format(format="text voxel")) from exc


def _decompressor(encoding: str):
    return bz2.BZ2Decompressor() if encoding == "bzip2" else zlib.decompressobj(_ZLIB_OR_GZIP)


def _inflate(path: Path, offset: int, n_bytes: int, encoding: str) -> bytes:
    """The first ``n_bytes`` of the compressed stream starting at ``offset``."""
    out = bytearray()
    dec = _decompressor(encoding)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while len(out) < n_bytes and not dec.eof:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                out += _take(dec, chunk, n_bytes - len(out))
            _check_end(dec, f)
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        raise QuarantineError(errors.CORRUPT_COMPRESSED) from exc
    if len(out) < n_bytes:
        raise QuarantineError(errors.TRUNCATED_COMPRESSED)
    return bytes(out[:n_bytes])


def _check_end(dec, f) -> None:
    """Inflate a little past the promised size so the stream's checksum is verified
    (zlib/gzip/bzip2 raise on a mismatch); extra output is discarded and bounded."""
    extra = 0
    while not dec.eof and extra < _TRAILING_LIMIT:
        if isinstance(dec, bz2.BZ2Decompressor) and not dec.needs_input:
            extra += len(dec.decompress(b"", max_length=_CHUNK))
            continue
        tail = getattr(dec, "unconsumed_tail", b"") or f.read(_CHUNK)
        if not tail:
            return
        extra += len(_take(dec, tail, _CHUNK))


def _take(dec, chunk: bytes, wanted: int) -> bytes:
    """Inflate ``chunk`` but keep at most ``wanted`` bytes of output."""
    if isinstance(dec, bz2.BZ2Decompressor):
        got = dec.decompress(chunk, max_length=wanted)
        while not dec.needs_input and not dec.eof and len(got) < wanted:
            got += dec.decompress(b"", max_length=wanted - len(got))
        return got
    got = dec.decompress(chunk, wanted)
    while dec.unconsumed_tail and len(got) < wanted:
        got += dec.decompress(dec.unconsumed_tail, wanted - len(got))
    return got
