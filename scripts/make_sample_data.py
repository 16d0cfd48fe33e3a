"""Build the bundled demo data (deepssim/sample_data) from real slices.

    python scripts/make_sample_data.py [--shared ../shared/data] [--extra deepssim_extra_data]

train/<subject>/*.png   a small training cohort: real MR and CT slices
candidates/*.png        a "synthetic release": planted copies of training slices under
                        nuisance transforms (flip, rotation, contrast, blur, noise) and
                        slices of subjects that are not in the cohort
truth.csv               which candidate is a planted copy of which training slice
Licences: see ../shared/data/README.md and deepssim_extra_data/README.md.
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, rotate

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deepssim" / "sample_data"
TRAIN = {  # subject -> (folder, every nth slice)
    "nibabel_anatomical": ("slices/brain_mri/nibabel_anatomical", 2),
    "heudiconv_crlab": ("slices/brain_mri/heudiconv_crlab", 3),
    "prad_ct_lung2": ("prad_ct_lung2", 5),
}
OTHERS = {"nibabel_example4d": ("slices/brain_mri/nibabel_example4d", 4),
          "prad_mr_brain2": ("prad_mr_brain2", 4), "pdd_ct_pancreas0001": ("pdd_ct_pancreas0001", 1),
          "dipy_s0_10slices": ("slices/brain_mri/dipy_s0_10slices", 3)}

COPIES = [  # (training subject, slice position in the subsampled list, transform)
    ("nibabel_anatomical", 5, "flip-h, rotate 8°, gamma 0.7"),
    ("nibabel_anatomical", 9, "rot90, gamma 1.4"),
    ("heudiconv_crlab", 4, "flip-v, blur σ1"),
    ("heudiconv_crlab", 8, "rotate -10°, noise σ0.02"),
    ("prad_ct_lung2", 3, "flip-h, gamma 0.6, blur σ0.7"),
    ("prad_ct_lung2", 7, "rotate 6°, gamma 1.3"),
]


def nuisance(img: np.ndarray, spec: str, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    for part in (p.strip() for p in spec.split(",")):
        if part == "flip-h":
            x = x[:, ::-1]
        elif part == "flip-v":
            x = x[::-1]
        elif part == "rot90":
            x = np.rot90(x)
        elif part.startswith("rotate"):
            x = rotate(x, float(part.split()[1].rstrip("°")), reshape=False, order=1)
        elif part.startswith("gamma"):
            x = np.clip(x, 0, 1) ** float(part.split()[1])
        elif part.startswith("blur"):
            x = gaussian_filter(x, float(part.split("σ")[1]))
        elif part.startswith("noise"):
            x = x + rng.normal(0, float(part.split("σ")[1]), x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def pick(base: Path, folder: str, every: int) -> list[Path]:
    return sorted((base / folder).glob("*.png"))[::every]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--extra", type=Path, default=ROOT / "deepssim_extra_data")
    args = ap.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    rng = np.random.default_rng(0)
    chosen = {}
    for subject, (folder, every) in TRAIN.items():
        base = args.shared if folder.startswith("slices") else args.extra
        chosen[subject] = pick(base, folder, every)
        dest = OUT / "train" / subject
        dest.mkdir(parents=True)
        for p in chosen[subject]:
            shutil.copy(p, dest / p.name)
    cand_dir = OUT / "candidates"
    cand_dir.mkdir(parents=True)
    rows, n = [], 0
    for subject, pos, spec in COPIES:
        src = chosen[subject][pos]
        name = f"synthetic_{n:03d}.png"
        Image.fromarray(nuisance(np.asarray(Image.open(src).convert("L")), spec, rng)).save(cand_dir / name)
        rows.append({"candidate": name, "kind": "planted copy", "source": f"train/{subject}/{src.name}",
                     "transform": spec})
        n += 1
    for subject, (folder, every) in OTHERS.items():
        base = args.shared if folder.startswith("slices") else args.extra
        for p in pick(base, folder, every)[:4]:
            name = f"synthetic_{n:03d}.png"
            shutil.copy(p, cand_dir / name)
            rows.append({"candidate": name, "kind": "other subject", "source": subject, "transform": ""})
            n += 1
    with open(OUT / "truth.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["candidate", "kind", "source", "transform"])
        w.writeheader()
        w.writerows(rows)
    print(f"{sum(len(v) for v in chosen.values())} training slices, {n} candidates -> {OUT}")


if __name__ == "__main__":
    main()
