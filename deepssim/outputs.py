"""The audit's output files — the contract other tools read (see the README):

* ``verdicts.csv``  one row per audited image: image_id, source_path, label, score,
  nearest_id, nearest_path, then embedding_score, verified, alignment, volume_id;
* ``volumes.csv``   one row per candidate volume;
* ``quarantine.csv`` files/slices that could not be audited, with the reason;
* ``summary.json``  verdict, counts, thresholds, policy, model, cohort, settings,
  validation, versions; run-specific values (audit id, times) only under ``"run"``.

Rows are sorted by ``image_id`` and floats rounded, so the same inputs give
byte-identical files apart from ``summary.json``'s ``run`` block.
"""
from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pandas as pd

VERDICT_COLUMNS = ["image_id", "source_path", "label", "score", "nearest_id", "nearest_path",
                   "embedding_score", "verified", "alignment", "volume_id"]
VOLUME_COLUMNS = ["volume_id", "slices", "duplicate_slices", "similar_slices", "worst_label",
                  "best_score", "best_image_id", "best_match"]
QUARANTINE_COLUMNS = ["image_id", "source_path", "reason"]
VERSIONED_PACKAGES = ("deepssim-gate", "torch", "monai", "numpy", "scikit-image", "duckdb",
                      "great_expectations", "prefect", "nibabel", "pydicom")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _atomic_write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_table(frame: pd.DataFrame, columns: list[str], path: Path) -> Path:
    out = frame.reindex(columns=columns)
    return _atomic_write(path, out.to_csv(index=False, lineterminator="\n"))


def write_summary(summary: dict, path: Path) -> Path:
    return _atomic_write(path, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def quarantine_table(manifest: pd.DataFrame) -> pd.DataFrame:
    bad = manifest[manifest["status"] == "quarantined"]
    return bad.reindex(columns=QUARANTINE_COLUMNS).sort_values(["image_id", "source_path"]).reset_index(drop=True)
