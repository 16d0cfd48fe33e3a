"""An ``.npy`` file written one block at a time, with memory bounded by one block.

The array length is unknown until every file has been read (near-empty slices are
skipped), so the writer reserves a fixed-size header, streams rows after it and writes
the final header (with the real shape) on close.  The result is a standard ``.npy``
(version 1.0) that ``np.load(..., mmap_mode="r")`` opens.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_HEADER_BYTES = 256
_MAGIC = b"\x93NUMPY\x01\x00"


class NpyAppender:
    """Append float16 blocks of shape (k, S, S) to ``path``; ``close()`` finalises the file.

    Written to ``<path>.partial`` and renamed on close, so a crash never leaves a file that
    looks complete.
    """

    def __init__(self, path: Path, size: int, dtype: np.dtype = np.float16):
        self.path = Path(path)
        self.size = size
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.rows = 0
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._fh = open(self._tmp, "wb")
        self._fh.write(b"\x00" * _HEADER_BYTES)

    def append(self, image: np.ndarray) -> int:
        """Write one (S, S) image; returns its row index."""
        if image.shape != (self.size, self.size):
            raise ValueError(f"expected ({self.size}, {self.size}), got {image.shape}")
        self._fh.write(np.ascontiguousarray(image, dtype=self.dtype).tobytes())
        self.rows += 1
        return self.rows - 1

    def _header(self) -> bytes:
        d = {"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, self.size, self.size)}
        text = repr(d).encode("latin1")
        body_len = _HEADER_BYTES - len(_MAGIC) - 2
        if len(text) + 1 > body_len:
            raise ValueError("array header too long")
        text = text + b" " * (body_len - len(text) - 1) + b"\n"
        return _MAGIC + body_len.to_bytes(2, "little") + text

    def close(self) -> Path:
        """Write the header, flush to disk and move the file into place."""
        self._fh.seek(0)
        self._fh.write(self._header())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file (after an error that must stop ingestion)."""
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)
