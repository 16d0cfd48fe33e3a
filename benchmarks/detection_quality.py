"""Detection quality of DeepSSIM and baselines on a memorization benchmark.

    python benchmarks/detection_quality.py SRC OUT [--checkpoint PT] [--subjects a,b,c]
        [--pydicom-ct] [--seed 0] [--methods ...] [--n 30]

Builds a benchmark from the real images under SRC (``<subject>/`` folders of PNG/NPY,
e.g. ../shared/data/slices) into ``OUT/bench`` (:func:`deepssim.evaluation.benchmark.build_benchmark`),
runs the methods (:func:`deepssim.evaluation.benchmark.run_benchmark`) and prints the markdown table;
``OUT/results/`` receives results.json, results.md and results.png.  ``--pydicom-ct`` adds
the CT test images pydicom ships (CT_small.dcm, liver_1frame.dcm), one subject each.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepssim.evaluation.benchmark import DEFAULT_METHODS, METHODS, build_benchmark, markdown_table, run_benchmark  # noqa: E402

PYDICOM_CT = {"pydicom_ct_small": "CT_small.dcm", "pydicom_liver": "liver_1frame.dcm"}


def pydicom_ct_folder(dest: Path) -> list[str]:
    """Write pydicom's CT test images as ``dest/<subject>/image.npy`` (HU, windowed later by
    percentiles).  Returns the subject names written."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    written = []
    for subject, name in PYDICOM_CT.items():
        ds = dcmread(get_testdata_file(name))
        hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) \
            + float(getattr(ds, "RescaleIntercept", 0))
        (dest / subject).mkdir(parents=True, exist_ok=True)
        np.save(dest / subject / "image.npy", hu)
        written.append(subject)
    return written


def gather_source(src: Path, subjects: set[str] | None, add_ct: bool, work: Path) -> Path:
    """A folder holding the wanted subjects of ``src`` (symlinked) plus optional CT."""
    work.mkdir(parents=True, exist_ok=True)
    # os.walk, not Path.rglob: rglob does not enter symlinked folders (Python 3.11), and
    # discover() does, so a source of symlinked subject folders gathered nothing
    files = [Path(d) / f for d, _, fs in os.walk(src, followlinks=True) for f in fs]
    for folder in sorted({p.parent for p in files if p.suffix.lower() in (".png", ".npy")}):
        if subjects is None or folder.name in subjects:
            link = work / folder.name
            if not link.exists():
                link.symlink_to(folder.resolve(), target_is_directory=True)
    if add_ct:
        pydicom_ct_folder(work)
    return work


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--subjects", default=None, help="comma-separated subject folders to use")
    ap.add_argument("--pydicom-ct", action="store_true", help="add pydicom's CT test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=30, help="candidates per kind")
    ap.add_argument("--max-per-subject", type=int, default=12)
    ap.add_argument("--train-fraction", type=float, default=0.5)
    ap.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS), choices=list(METHODS))
    args = ap.parse_args(argv)

    subjects = set(args.subjects.split(",")) if args.subjects else None
    with tempfile.TemporaryDirectory() as tmp:
        source = gather_source(args.src, subjects, args.pydicom_ct, Path(tmp) / "src")
        bench = args.out / "bench"
        if bench.exists():
            shutil.rmtree(bench)
        summary = build_benchmark(source, bench, seed=args.seed, n_duplicates=args.n, n_similar=args.n,
                                  n_different=args.n, max_per_subject=args.max_per_subject,
                                  train_fraction=args.train_fraction)
    print(f"members: {summary['members']}\nnon-members: {summary['non_members']}\n"
          f"train images: {summary['train_images']}, candidates: {summary['counts']}, "
          f"labels by SSIM: {summary['labels']}\n")
    results = run_benchmark(bench, checkpoint=args.checkpoint, methods=args.methods,
                            out_dir=args.out / "results")
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
