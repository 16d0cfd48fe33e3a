"""The audit trail as people read it: one line per audit from :meth:`Store.audits`."""
from __future__ import annotations

import json

import pandas as pd

COUNT_COLUMNS = ("duplicate", "similar", "different", "quarantined")


def audit_table(audits: pd.DataFrame) -> pd.DataFrame:
    """``Store.audits()`` -> audit_id, finished (UTC), cohort, candidates, verdict, the
    per-label counts and whether the store keeps its files; newest first as given."""
    rows = []
    for a in audits.itertuples():
        counts = json.loads(a.counts) if isinstance(a.counts, str) else (a.counts or {})
        audited = sum(int(counts.get(k, 0)) for k in COUNT_COLUMNS[:3])
        finished = pd.Timestamp(a.finished_at).strftime("%Y-%m-%d %H:%M:%S") if pd.notna(a.finished_at) else "-"
        rows.append({"audit_id": a.audit_id, "finished_utc": finished, "cohort": a.cohort,
                     "candidates": audited + int(counts.get("quarantined", 0)), "verdict": a.verdict,
                     **{k: int(counts.get(k, 0)) for k in COUNT_COLUMNS},
                     "files": "kept" if a.files else "-"})
    return pd.DataFrame(rows, columns=["audit_id", "finished_utc", "cohort", "candidates", "verdict",
                                       *COUNT_COLUMNS, "files"])
