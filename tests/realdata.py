"""Real slices from ../shared/data for tests (skipped outside CI when absent; conftest
makes their absence an error under CI)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SLICES = SHARED_DATA / "slices" / "brain_mri"


def load_slice(subject: str, index: int) -> np.ndarray:
    """Slice ``index`` of ``subject`` as a (128, 128) float32 model input in [0, 1]."""
    from PIL import Image

    from deepssim.preprocess import to_model_input

    files = sorted((SLICES / subject).glob("*.png"))
    if not files:
        pytest.skip(f"shared data for {subject} not present")
    return to_model_input(np.asarray(Image.open(files[index]).convert("L")), 128, window=(0, 255))
