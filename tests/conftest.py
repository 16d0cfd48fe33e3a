"""Shared test set-up: an offline Prefect, and small real image folders.

The Prefect environment is set at import time of this file, i.e. before any test module
(and so before ``prefect``) is imported: Prefect reads its settings on import.

Data comes from ``deepssim/sample_data`` (bundled in the repo) so the tests run from a
clean clone without ``../shared``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "deepssim" / "sample_data"
_PREFECT_ROOT = Path(tempfile.mkdtemp(prefix="deepssim-tests-prefect-"))

OFFLINE_ENV = {
    "PREFECT_HOME": str(_PREFECT_ROOT / "home"),
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(_PREFECT_ROOT / "results"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}
os.environ.update(OFFLINE_ENV)

# Tests that need ../shared/data skip without it (a clone on a laptop); CI must never
# skip them silently, so under CI its absence is an error.
SHARED_DATA = REPO.parent / "shared" / "data"
if os.environ.get("CI") and not SHARED_DATA.is_dir():
    raise pytest.UsageError(f"CI needs the real data at {SHARED_DATA}: tests would skip without it")

# Training slices used by the flow tests: two subjects, a few slices each.
TRAIN_SUBJECTS = {
    "nibabel_anatomical": ["nibabel_anatomical_v0_s006.png", "nibabel_anatomical_v0_s010.png",
                           "nibabel_anatomical_v0_s014.png", "nibabel_anatomical_v0_s018.png"],
    "prad_ct_lung2": ["prad_ct_lung2_s005.png", "prad_ct_lung2_s015.png",
                      "prad_ct_lung2_s025.png", "prad_ct_lung2_s036.png"],
}
# Slices of subjects that are not in the training folder (bundled "other subject" candidates).
OTHER_SUBJECTS = ["synthetic_006.png", "synthetic_010.png", "synthetic_014.png", "synthetic_015.png"]


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "prefect: needs the shared Prefect test harness")


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_PREFECT_ROOT, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(request):
    """Offline env for every test; one ``prefect_test_harness`` (~6 s) for the whole session,
    started only when a collected test is marked ``prefect`` (or ``slow``: end-to-end) so pure
    library tests stay fast.  Yields the harness API URL (or None) so subprocesses can share
    the same server."""
    if not any(item.get_closest_marker("prefect") or item.get_closest_marker("slow")
               for item in request.session.items):
        yield None
        return
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


# ----------------------------------------------------------------------------- images
def _gray(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0


def _save(image: np.ndarray, path: Path) -> Path:
    """Write a float image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
    return np.asarray(pil.rotate(degrees, resample=Image.BILINEAR), dtype=np.float64) / 255.0


# candidate name -> (training image relative path, transform): flips, turns, small
# rotations and contrast changes are what a memorising generator's copy may carry.
COPIES = {
    "copy_fliph_gamma.png": ("nibabel_anatomical/nibabel_anatomical_v0_s010.png",
                             lambda x: np.fliplr(x) ** 0.7),
    "copy_rot90.png": ("prad_ct_lung2/prad_ct_lung2_s015.png", lambda x: np.rot90(x)),
    "copy_rot6_contrast.png": ("nibabel_anatomical/nibabel_anatomical_v0_s018.png",
                               lambda x: np.clip(_rotate(x, 6.0) * 1.2 - 0.05, 0, 1)),
    "copy_flipv_gamma.png": ("prad_ct_lung2/prad_ct_lung2_s036.png", lambda x: np.flipud(x) ** 1.3),
}


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory) -> Path:
    """A small real training folder: ``<subject>/<slice>.png`` (8 slices, 2 subjects)."""
    root = tmp_path_factory.mktemp("train")
    for subject, names in TRAIN_SUBJECTS.items():
        (root / subject).mkdir()
        for name in names:
            shutil.copy(SAMPLE_DATA / "train" / subject / name, root / subject / name)
    return root


@pytest.fixture(scope="session")
def extra_train_image() -> Path:
    """A real training slice that is not in ``train_dir`` (to test incremental registration)."""
    return SAMPLE_DATA / "train" / "heudiconv_crlab" / "heudiconv_axasc35_v0_s012.png"


@pytest.fixture(scope="session")
def others_dir(tmp_path_factory) -> Path:
    """Slices of subjects absent from ``train_dir`` only."""
    root = tmp_path_factory.mktemp("others")
    for name in OTHER_SUBJECTS:
        shutil.copy(SAMPLE_DATA / "candidates" / name, root / f"other_{name}")
    return root


@pytest.fixture(scope="session")
def candidates_dir(tmp_path_factory, train_dir, others_dir) -> tuple[Path, dict[str, str]]:
    """Transformed copies of training slices plus other subjects' slices.

    Returns (folder, {copy image_id: source image_id in the training cohort})."""
    root = tmp_path_factory.mktemp("candidates")
    for name, (source, transform) in COPIES.items():
        _save(transform(_gray(train_dir / source)), root / name)
    for path in others_dir.iterdir():
        shutil.copy(path, root / path.name)
    return root, {name: source for name, (source, _) in COPIES.items()}
