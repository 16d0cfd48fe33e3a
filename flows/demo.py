"""The demo: register the bundled real sample cohort, audit the bundled candidates.

The candidates hold planted copies (flipped, rotated, re-contrasted, blurred or noisy
versions of training slices) among slices of subjects that are not in the cohort; the
demo checks that every planted copy is flagged as a duplicate.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "deepssim" / "sample_data"


def run_demo(out: Path, sample_data: Path = SAMPLE_DATA) -> dict:
    from flows.audit import audit, audit_outcome
    from flows.register_cohort import register_cohort

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    db = str(out / "demo.duckdb")
    register_cohort(name="demo-train", paths=[str(sample_data / "train")], db=db)
    state = audit(candidates=[str(sample_data / "candidates")], cohort="demo-train", out_dir=str(out / "audit"),
                  db=db, return_state=True)
    outcome = audit_outcome(state)
    truth = pd.read_csv(sample_data / "truth.csv")
    verdicts = pd.read_csv(out / "audit" / "verdicts.csv")
    planted = truth[truth["kind"] == "planted copy"]["candidate"]
    labels = verdicts.set_index("image_id")["label"]
    found = int((labels.reindex(planted) == "duplicate").sum())
    others = truth[truth["kind"] != "planted copy"]["candidate"]
    false_alarms = int((labels.reindex(others) == "duplicate").sum())
    return {**outcome, "demo": {"planted": len(planted), "planted_found": found,
                                "other_subjects": len(others), "false_duplicates": false_alarms}}
