"""Silencing third-party readers while they parse a file.

Readers log and warn about damaged input in their own words, and those words quote what
they read: header values (a DICOM ``PatientName``), file names, offsets.  The ingestion
records its own short reason instead, so these records are dropped while a file is read.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator


def _drop(record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Drop the log records of ``loggers`` and all warnings inside the block."""
    targets = [logging.getLogger(name) for name in loggers]
    for logger in targets:
        logger.addFilter(_drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger in targets:
            logger.removeFilter(_drop)
