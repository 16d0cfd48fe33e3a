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
import re
import shutil
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Callable

import pandas as pd

VERDICT_COLUMNS = ["image_id", "source_path", "label", "score", "nearest_id", "nearest_path",
                   "embedding_score", "verified", "alignment", "volume_id"]
VOLUME_COLUMNS = ["volume_id", "slices", "duplicate_slices", "similar_slices", "worst_label",
                  "best_score", "best_image_id", "best_match"]
QUARANTINE_COLUMNS = ["image_id", "source_path", "reason"]
VERSIONED_PACKAGES = ("deepssim-gate", "torch", "monai", "numpy", "scikit-image", "duckdb",
                      "great_expectations", "prefect", "nibabel", "pydicom")


def image_ref(image_id: str) -> str:
    """An opaque, stable reference to an image id for artifacts, logs and run states: a
    salted SHA-256 (``$DEEPSSIM_ID_SALT``, as DICOM series names use), 12 hex digits.  Ids
    hold paths and subject folder names (often patient codes); the local report and the CSVs
    show both, so a ref is looked up there."""
    from deepssim.io.dicom import series_hash

    return "ref-" + series_hash(f"image\x00{image_id}")[:12]


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


def summary_text(summary: dict) -> str:
    """``summary.json``'s exact text (what the store keeps and ``audits export`` rewrites)."""
    return json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"


def write_summary(summary: dict, path: Path) -> Path:
    return _atomic_write(path, summary_text(summary))


def quarantine_table(manifest: pd.DataFrame) -> pd.DataFrame:
    bad = manifest[manifest["status"] == "quarantined"]
    return bad.reindex(columns=QUARANTINE_COLUMNS).sort_values(["image_id", "source_path"]).reset_index(drop=True)


# ---------------------------------------------------------------- run folders (scheduled gate)
RUN_FOLDER = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]+$")
LATEST = "latest"


def run_folder_name(started_at: str, audit_id: str) -> str:
    """``YYYYMMDDTHHMMSSZ-<audit id>``: sorts by time, names the audit it holds."""
    stamp = datetime.strptime(started_at[:19], "%Y-%m-%dT%H:%M:%S")
    return f"{stamp:%Y%m%dT%H%M%SZ}-{audit_id}"


def point_latest(root: Path, folder: Path) -> Path:
    """Make ``root/latest`` a relative symlink to ``folder`` (replaced atomically)."""
    link, tmp = root / LATEST, root / f".{LATEST}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder.name, target_is_directory=True)
    os.replace(tmp, link)
    return link


def _run_folders(root: Path) -> list[Path]:
    """The run folders under ``root``, newest first."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and RUN_FOLDER.match(p.name)),
                  key=lambda p: p.name, reverse=True)


def run_folder_audit_id(folder: Path) -> str:
    """The audit id in a run folder's name (``<UTC time>-<audit id>``, :func:`run_folder_name`)."""
    return folder.name.split("-", 1)[1]


def run_folder_audit_ids(root: Path) -> list[str]:
    """The audit ids of the run folders under ``root``, newest first."""
    return [run_folder_audit_id(p) for p in _run_folders(root)]


def prune_run_folders(root: Path, keep: int, kept_elsewhere: Callable[[str], bool]) -> list[Path]:
    """Delete run folders beyond the newest ``keep`` — only those whose audit
    ``kept_elsewhere(audit_id)`` says the store can export.  Returns what was deleted."""
    removed = []
    for old in _run_folders(root)[max(keep, 1):]:
        if kept_elsewhere(run_folder_audit_id(old)):
            shutil.rmtree(old)
            removed.append(old)
    return removed
