"""The demo: register the bundled real sample cohort, audit the bundled candidates.

The candidates hold planted copies (flipped, rotated, re-contrasted, blurred or noisy
versions of training slices) among slices of subjects that are not in the cohort; the
demo checks that every planted copy is flagged as a duplicate.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pandas as pd

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "deepssim" / "sample_data"


def run_demo(out: Path, sample_data: Path = SAMPLE_DATA, say: Callable[[str], None] = lambda message: None) -> dict:
    """Register, audit, compare with the planted truth; ``say`` gets one line per stage."""
    say("starting Prefect (a local, temporary server) ...")
    from flows.audit import audit, audit_outcome
    from flows.register_cohort import register_cohort

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    db = str(out / "demo.duckdb")
    train = sorted((sample_data / "train").rglob("*.png"))
    candidates = sorted((sample_data / "candidates").glob("*.png"))
    start = time.perf_counter()
    say(f"1/2 registering the bundled training cohort: {len(train)} real slices ...")
    register_cohort(name="demo-train", paths=[str(sample_data / "train")], db=db)
    say(f"    done in {time.perf_counter() - start:.0f} s")
    say(f"2/2 auditing {len(candidates)} candidates (embed, search, verify the nearest 30 each) ...")
    state = audit(candidates=[str(sample_data / "candidates")], cohort="demo-train", out_dir=str(out / "audit"),
                  db=db, return_state=True)
    say(f"    done in {time.perf_counter() - start:.0f} s in all")
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
