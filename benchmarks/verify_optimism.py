"""Where the verified score's over-estimate of a neighbouring slice comes from.

    python benchmarks/verify_optimism.py SRC [--pairs-per-subject 6] [--seed 0]

Pairs of slices 1-3 apart in the same volume (``<subject>/`` folders of PNG/NPY slices under SRC,
read like the benchmark builder reads them, :func:`deepssim.evaluation.benchmark.discover`; subjects
with at least 4 slices), the nearer slice quantised to 8 bit like every benchmark candidate.  A
neighbouring slice's label is its plain reference SSIM to the other (a registered volume: the
identity is the true alignment), so anything the verifier adds is optimism.  Reports the mean
bias (verified score - label):

- with the default verifier, for the clean slice and under one nuisance at a time (blur, noise,
  gamma + shading, rotation/zoom/shift, flip);
- on the clean slice with the verifier's freedoms taken away one after another: the noise discount,
  the fitted photometry and the blur softenings; then the photometric refinement; then the
  Gauss-Newton refinement (left: the coarse grid and the untransformed alignment).

Prints a markdown table.  Every figure is the same verifier on the same pairs: only the differences
between rows mean anything.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepssim.audit import verify  # noqa: E402
from deepssim.config import VerificationConfig  # noqa: E402
from deepssim.evaluation.benchmark import _quantise, discover  # noqa: E402
from deepssim.metric.ssim import reference_ssim  # noqa: E402


def slice_pairs(src: Path, per_subject: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    data = discover(src, 128)
    rng = np.random.default_rng(seed)
    pairs = []
    for subject in np.unique(data.subjects):
        rows = np.flatnonzero(data.subjects == subject)
        if len(rows) < 4:
            continue
        for _ in range(per_subject):
            i, gap = rng.integers(0, len(rows) - 3), rng.integers(1, 4)
            pairs.append((data.images[rows[i]].astype(np.float32), data.images[rows[i + gap]].astype(np.float32)))
    return pairs


def _warp(x: np.ndarray) -> np.ndarray:
    warped, _ = verify._affine(torch.from_numpy(x)[None, None], torch.tensor([7.0]), torch.tensor([1.05]),
                               torch.tensor([[3.0, -2.0]]))
    return warped[0, 0].numpy()


_Y, _X = np.mgrid[-1:1:128j, -1:1:128j]
NUISANCES = {
    "none (the clean slice)": lambda x: x,
    "blur 0.8 px": lambda x: verify._gaussian_blur(torch.from_numpy(x)[None, None], 0.8)[0, 0].numpy(),
    "noise sd 0.02": lambda x: x + np.random.default_rng(1).normal(0, 0.02, x.shape),
    "gamma 0.7 + shading": lambda x: np.clip(x, 0, 1) ** 0.7 * np.exp(0.3 * _X - 0.2 * _Y * _Y),
    "rotate 7°, zoom 1.05, shift (3, -2) px": _warp,
    "flip": lambda x: x[:, ::-1].copy(),
}


def mean_bias(pairs, nuisance, config: VerificationConfig, no_noise=False, no_fit=False) -> float:
    patches = []
    if no_noise:
        patches.append(mock.patch.object(verify, "noise_sd", lambda *a, **k: 0.0))
    if no_fit:
        patches.append(mock.patch.object(verify, "_map_photometry", lambda reference, *a: reference))
    for p in patches:
        p.start()
    try:
        bias = []
        for reference, neighbour in pairs:
            label = reference_ssim(_quantise(neighbour), reference)
            candidate = _quantise(np.clip(nuisance(neighbour), 0, 1)).astype(np.float32)
            bias.append(verify.verify_pair(candidate, reference, config).score - label)
        return float(np.mean(bias))
    finally:
        for p in patches:
            p.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("--pairs-per-subject", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pairs = slice_pairs(args.src, args.pairs_per_subject, args.seed)
    default = VerificationConfig(workers=1)
    bare = replace(default, blur_sigmas=(0.0,), grid_factors=())
    clean = NUISANCES["none (the clean slice)"]
    lines = [f"{len(pairs)} pairs of slices 1-3 apart; mean bias of the verified score to the label", "",
             "| verifier | nuisance on the neighbouring slice | bias |", "|---|---|---|"]
    for name, nuisance in NUISANCES.items():
        lines.append(f"| default | {name} | {mean_bias(pairs, nuisance, default):+.3f} |")
    for name, config, no_noise_fit in (
            ("no noise discount, no fitted photometry, no blur softenings", bare, True),
            ("... and no photometric refinement", replace(bare, photometric_refine_steps=0), True),
            ("... and no Gauss-Newton (coarse grid and the untransformed alignment)",
             replace(bare, photometric_refine_steps=0, refine_steps=0), True)):
        lines.append(f"| {name} | none | {mean_bias(pairs, clean, config, no_noise_fit, no_noise_fit):+.3f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
