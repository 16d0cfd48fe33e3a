"""Readers and ingestion: medical images on disk -> manifest + model inputs.

``from deepssim.io import ingest, IngestResult`` — see :mod:`deepssim.io.ingest`.
Imports of nibabel / pydicom / Pillow / tifffile happen inside the readers.
"""
from .errors import QuarantineError
from .ingest import MANIFEST_COLUMNS, READERS, IngestResult, ingest

__all__ = ["MANIFEST_COLUMNS", "READERS", "IngestResult", "QuarantineError", "ingest"]
