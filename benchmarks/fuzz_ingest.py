"""The large fuzz run of the ingestion: thousands of damaged real files, each ingested alone.

Same engine as ``tests/test_fuzz.py`` (``tests/helpers/fuzz.py``: bit flips, truncation,
overwritten header bytes, spliced random bytes, huge header numbers; 16 seed files covering
PNG, JPEG, TIFF, NPY, NPZ, DICOM, NIfTI, NRRD (raw, gzip, detached), MetaImage (raw, zlib,
detached raw/zraw), MGH and MGZ).  Reports escapes (an exception out of a reader), lost files
(neither audited nor quarantined), the slowest file and the largest traced peak memory, and
the quarantine reasons seen.

    python benchmarks/fuzz_ingest.py --n 2400 --seed 1 --out fuzz.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from helpers.fuzz import campaign  # noqa: E402


def summarise(outcomes, seconds: float) -> dict:
    slowest = max(outcomes, key=lambda o: o.seconds)
    largest = max(outcomes, key=lambda o: o.peak_bytes)
    return {
        "files": len(outcomes),
        "wall_seconds": round(seconds, 1),
        "escapes": [f"{o.seed_name} {o.mutation}: {o.escaped}" for o in outcomes if o.escaped],
        "lost": [f"{o.seed_name} {o.mutation} ({o.target})" for o in outcomes if o.lost],
        "audited_some_slices": sum(o.ok_slices > 0 for o in outcomes),
        "fully_quarantined": sum(o.ok_slices == 0 for o in outcomes),
        "slowest_file": {"seed": slowest.seed_name, "mutation": slowest.mutation,
                         "seconds": round(slowest.seconds, 3)},
        "largest_peak": {"seed": largest.seed_name, "mutation": largest.mutation,
                         "megabytes": round(largest.peak_bytes / 1e6, 1)},
        "by_seed": dict(Counter(o.seed_name for o in outcomes)),
        "reasons": dict(Counter(r for o in outcomes for r in o.reasons).most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2400, help="number of mutated files")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deepssim-fuzz-") as work:
        start = time.perf_counter()
        outcomes = campaign(args.n, args.seed, Path(work))
        summary = summarise(outcomes, time.perf_counter() - start)
    text = json.dumps(summary, indent=2, ensure_ascii=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.exit(1 if summary["escapes"] or summary["lost"] else 0)


if __name__ == "__main__":
    main()
