"""Small manifest helpers shared by ingestion, validation and the flows."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

QUARANTINE_COLUMNS = ["image_id", "source_path", "reason"]


def quarantine_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The quarantined rows, columns image_id/source_path/reason, sorted by image_id."""
    q = manifest.loc[manifest["status"] == "quarantined", QUARANTINE_COLUMNS]
    return q.sort_values("image_id", kind="stable").reset_index(drop=True)


def write_quarantine_csv(manifest: pd.DataFrame, path: Path) -> Path:
    """Write ``quarantine.csv`` (image_id, source_path, reason); a header only when none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quarantine_rows(manifest).to_csv(path, index=False)
    return path
