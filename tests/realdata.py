"""Real slices from ../shared/data for tests.

Only a clone without ../shared/data at all skips (a laptop; conftest makes that an error
under CI).  When the data is there, a subject or slice a test names that is missing is a
failure, not a skip: a renamed folder must not silently switch tests off."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SLICES = SHARED_DATA / "slices" / "brain_mri"


def require_shared_data() -> Path:
    """``../shared/data``, or skip the test when the clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present at {SHARED_DATA}")
    return SHARED_DATA


def slice_path(subject: str, index: int) -> Path:
    """Path of PNG slice ``index`` (sorted by name) of brain-MR ``subject``."""
    require_shared_data()
    files = sorted((SLICES / subject).glob("*.png"))
    assert len(files) > index, f"{SLICES / subject} has {len(files)} slices, the test needs #{index}"
    return files[index]


def load_slice(subject: str, index: int) -> np.ndarray:
    """Slice ``index`` of ``subject`` as a (128, 128) float32 model input in [0, 1]."""
    from PIL import Image

    from deepssim.preprocess import to_model_input

    image = np.asarray(Image.open(slice_path(subject, index)).convert("L"))
    return to_model_input(image, 128, window=(0, 255))
