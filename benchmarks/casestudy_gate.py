"""The gate on a case study's samples, old vs new in one run: the default verification
(new) against the same audit without the generator-grid softening (old:
``VerificationConfig(grid_factors=())``), on the very same samples, labels and cohort.

    deepssim casestudy --out CS [--generator PT]          # samples, labels, the new audit
    python benchmarks/casestudy_gate.py CS                  # re-audits CS's candidates the old way

Prints per-class precision/recall, macro F1 and the score's error to the label SSIM of both,
and the non-member control's labels; writes ``CS/gate_old_vs_new.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for key, value in {"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(key, value)

import pandas as pd  # noqa: E402

from deepssim.evaluation import gate_agreement  # noqa: E402


def _agreement(labels: pd.DataFrame, verdicts: pd.DataFrame) -> dict:
    joined = labels.merge(verdicts[["image_id", "label", "score"]].rename(
        columns={"label": "gate_label", "score": "gate_score"}), on="image_id")
    samples, control = joined[joined["group"] == "sample"], joined[joined["group"] != "sample"]
    result = gate_agreement(samples["label"], samples["gate_label"], samples["label_ssim"].to_numpy(),
                            samples["gate_score"].to_numpy())
    result["control"] = control["gate_label"].value_counts().to_dict()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("casestudy", type=Path, help="a `deepssim casestudy --out` folder")
    args = ap.parse_args()
    from flows.audit import audit, audit_outcome

    cs = args.casestudy.resolve()
    summary = json.loads((cs / "casestudy.json").read_text())
    labels = pd.read_csv(cs / "labels.csv")
    state = audit(candidates=[str(cs / "candidates")], cohort=summary["settings"]["cohort"], out_dir=str(cs / "audit-old"),
                  db=str(cs / "casestudy.duckdb"), settings={"verification": {"grid_factors": []}}, return_state=True)
    audit_outcome(state)
    report = {name: _agreement(labels, pd.read_csv(cs / folder / "verdicts.csv"))
              for name, folder in (("old", "audit-old"), ("new", "audit"))}
    for name, r in report.items():
        per = "  ".join(f"{c} P {v['precision']:.3f} R {v['recall']:.3f} (n {v['support']})" for c, v in r["per_class"].items())
        print(f"{name}: macro F1 {r['macro_f1']:.3f}  {per}  MAE {r['score_error']['mae']:.3f} "
              f"bias {r['score_error']['bias']:+.3f}  control {r['control']}")
    (cs / "gate_old_vs_new.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
