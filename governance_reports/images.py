"""Image helpers for the report: arrays to PNG bytes, PNG bytes to ``data:`` URIs.

Callers (the audit flow) turn pixel arrays into PNG bytes with :func:`png_bytes` and put
those bytes in the report context; the report inlines them with :func:`data_uri`, so the
HTML never references a file or a URL.
"""
from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["png_bytes", "data_uri", "PNG_SIGNATURE"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a 2D float image in ``[0, 1]`` as an 8-bit grayscale PNG.

    Values outside ``[0, 1]`` are clipped and NaN/inf become 0, so a bad pixel never
    breaks a report.  Raises ``ValueError`` for anything that is not 2D.
    """
    from PIL import Image

    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"png_bytes expects a 2D (H, W) image, got shape {arr.shape}")
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    u8 = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes | None) -> str | None:
    """``data:image/png;base64,...`` for PNG bytes; ``None`` when there is no valid PNG.

    Only real PNG bytes are inlined (the signature is checked), so arbitrary bytes from
    a caller cannot smuggle another MIME type into the page.
    """
    if not png or not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(PNG_SIGNATURE):
        return None
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")
