"""Old vs new in one run: the verified audit path with and without the generator-grid
softening (``VerificationConfig.grid_factors``) on built planted-copy benchmarks.

    python benchmarks/grid_softening.py BENCH_DIR [BENCH_DIR ...] [--json OUT.json]

Each BENCH_DIR is a benchmark built by ``deepssim benchmark build`` or
``benchmarks/detection_quality.py`` (``OUT/bench``).  Prints macro F1 and per-class
precision/recall of "DeepSSIM + verification" with ``grid_factors=()`` (old) and the
default (new), the candidates whose label changed, and the share of candidates the
band-limit test let through a coarser grid.  The planted-copy benchmarks must not get worse.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from deepssim.config import VerificationConfig  # noqa: E402
from deepssim.evaluation.benchmark import run_benchmark  # noqa: E402

METHOD = "DeepSSIM + verification"


def _row(result: dict) -> dict:
    m = result["methods"][METHOD]
    return {"macro_f1": m["macro_f1"], "per_class": m.get("per_class"), "scores": m["scores"],
            "seconds_per_candidate": m["seconds_per_candidate"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benches", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    new = VerificationConfig()
    old = replace(new, grid_factors=())
    report = {}
    for bench in args.benches:
        runs = {name: _row(run_benchmark(bench, methods=[METHOD], verification=config))
                for name, config in (("old", old), ("new", new))}
        diff = np.abs(np.array(runs["new"]["scores"]) - np.array(runs["old"]["scores"]))
        report[str(bench)] = {**runs, "changed_scores": int((diff > 1e-6).sum()), "max_change": float(diff.max())}
        for name in ("old", "new"):
            r = runs[name]
            print(f"{bench} {name}: macro F1 {r['macro_f1']:.3f}  {json.dumps(r['per_class'])}  "
                  f"{r['seconds_per_candidate']:.3f} s/candidate")
        print(f"{bench}: {report[str(bench)]['changed_scores']} scores changed, largest change "
              f"{report[str(bench)]['max_change']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
