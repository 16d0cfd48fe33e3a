"""Thresholds calibrated on one benchmark, applied to another (out of sample).

    python benchmarks/calibrated_transfer.py FIT_RUN APPLY_RUN [APPLY_RUN ...]
        [--method "DeepSSIM + verification"] [--apply-method NAME] [--min-duplicate-recall 0.98]

Each RUN is an output folder of ``benchmarks/detection_quality.py`` (``RUN/bench/truth.csv``
and ``RUN/results/results.json``).  Thresholds are fitted on FIT_RUN's scores of ``--method``
with :func:`deepssim.evaluation.calibrate.calibrate_from_benchmark` (what ``deepssim calibrate
--benchmark`` does) and the labels they imply are scored on each APPLY_RUN: macro F1 and
per-class precision / recall, printed as a markdown table.  No image is re-scored.
``--apply-method`` names the same scores in APPLY_RUNs written under another method name.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepssim.evaluation.benchmark import evaluate  # noqa: E402
from deepssim.evaluation.scoring import calibrate_from_benchmark  # noqa: E402

CLASSES = ("duplicate", "similar", "different")


def load_run(run: Path, method: str) -> tuple[np.ndarray, list[str]]:
    """(scores, truth labels) of ``method`` in a detection_quality output folder."""
    results = json.loads((run / "results" / "results.json").read_text())
    if method not in results["methods"]:
        raise SystemExit(f"{run}: no method {method!r} (have: {', '.join(results['methods'])})")
    with open(run / "bench" / "truth.csv", newline="") as f:
        truth = [row["label"] for row in csv.DictReader(f)]
    return np.asarray(results["methods"][method]["scores"], np.float64), truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fit", type=Path)
    ap.add_argument("apply", type=Path, nargs="+")
    ap.add_argument("--method", default="DeepSSIM + verification")
    ap.add_argument("--apply-method", default=None, help="default: --method")
    ap.add_argument("--min-duplicate-recall", type=float, default=0.98)
    args = ap.parse_args(argv)

    thresholds = calibrate_from_benchmark(*load_run(args.fit, args.method), args.min_duplicate_recall,
                                          name=str(args.fit))
    print(f"thresholds: similar {thresholds.similar:.3f}, duplicate {thresholds.duplicate:.3f} "
          f"({thresholds.source})\n")
    header = " | ".join(f"{name} P / R" for name in CLASSES)
    print(f"| applied to | macro F1 | {header} |\n|---|---|" + "---|" * len(CLASSES))
    for run in args.apply:
        result = evaluate(*load_run(run, args.apply_method or args.method), thresholds)
        pc = result["per_class"]
        cells = " | ".join(f"{pc[c]['precision']:.2f} / {pc[c]['recall']:.2f}" for c in CLASSES)
        print(f"| {run} | {result['macro_f1']:.3f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
