"""GX validation of a real ingestion manifest, and the quarantine CSV."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from deepssim.config import IngestConfig
from deepssim.io import ingest
from deepssim.audit.validate import ValidationConfig, validate_manifest, write_quarantine_csv

from realdata import SHARED_DATA, SLICES

PIESNO = SLICES / "dipy_piesno"

# only a clone without ../shared/data skips; with it, a missing subject folder fails below
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared real data not present")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pd.DataFrame:
    assert PIESNO.is_dir(), f"{PIESNO} is missing from the shared data"
    tmp = tmp_path_factory.mktemp("val")
    folder = tmp / "in"
    shutil.copytree(PIESNO, folder)
    (folder / "empty.png").write_bytes(b"")
    return ingest([folder], IngestConfig(), 32, tmp / "w").manifest


def _by_name(summary: dict) -> dict:
    return {e["name"]: e for e in summary["expectations"]}


def test_clean_manifest_passes(manifest):
    summary, out = validate_manifest(manifest)
    assert summary["success"] is True, summary
    assert summary["gx_version"].startswith("1.")
    names = set(_by_name(summary))
    assert {"status_is_known", "image_id_unique", "nan_fraction_at_most_limit", "min_side_at_least_limit",
            "intensity_range_finite", "sha256_present", "sha256_is_64_hex",
            "foreground_at_least_threshold"} <= names
    pd.testing.assert_frame_equal(out.reset_index(drop=True), manifest.reset_index(drop=True))
    assert (out["status"] == "quarantined").sum() == 1  # empty.png, quarantined by ingestion


def test_bad_rows_are_flagged_and_quarantined(manifest):
    bad = manifest.copy()
    ok = bad.index[bad["status"] == "ok"]
    nan_id, hash_id, fg_id, dup_id = (bad.at[i, "image_id"] for i in ok[:4])
    bad.at[ok[0], "nan_fraction"] = 0.9
    bad.at[ok[1], "sha256"] = "not-a-hash"
    bad.at[ok[2], "foreground_fraction"] = 0.01
    bad.at[ok[4], "image_id"] = dup_id
    bad.at[ok[5], "orig_shape"] = "8x128"
    bad.at[ok[6], "intensity_max"] = float("inf")
    summary, out = validate_manifest(bad)
    assert summary["success"] is False
    e = _by_name(summary)
    assert e["nan_fraction_at_most_limit"]["unexpected_ids"] == [nan_id]
    assert e["sha256_is_64_hex"]["unexpected_ids"] == [hash_id]
    assert e["foreground_at_least_threshold"]["unexpected_ids"] == [fg_id]
    assert e["image_id_unique"]["unexpected_ids"] == [dup_id] and e["image_id_unique"]["unexpected_count"] == 2
    assert e["min_side_at_least_limit"]["unexpected_count"] == 1
    assert e["intensity_range_finite"]["unexpected_count"] == 1
    assert e["status_is_known"]["success"] and e["sha256_present"]["success"]
    flagged = out.loc[[ok[0], ok[1], ok[2], ok[3], ok[4], ok[5], ok[6]]]
    assert (flagged["status"] == "quarantined").all() and (flagged["row"] == -1).all()
    assert out.at[ok[0], "reason"] == "failed validation: NaN fraction above 0.5"
    assert out.at[ok[5], "reason"] == "failed validation: image smaller than 16×16"
    assert (out.loc[ok[7:], "status"] == "ok").all()


def test_limits_are_configurable(manifest):
    summary, out = validate_manifest(manifest, ValidationConfig(foreground_threshold=0.99))
    assert not _by_name(summary)["foreground_at_least_threshold"]["success"]
    assert len(_by_name(summary)["foreground_at_least_threshold"]["unexpected_ids"]) <= 20
    assert (out["status"] == "ok").sum() == 0


def test_quarantine_csv(manifest, tmp_path):
    path = write_quarantine_csv(manifest, tmp_path / "out" / "quarantine.csv")
    q = pd.read_csv(path)
    assert list(q.columns) == ["image_id", "source_path", "reason"]
    assert q.to_dict("records")[0]["image_id"] == "empty.png"
    assert q.to_dict("records")[0]["reason"] == "empty file (0 bytes)"
