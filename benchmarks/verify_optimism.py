"""Where the verified score's over-estimate of a neighbouring slice (and of an edit) comes from.

    python benchmarks/verify_optimism.py SRC [--pairs-per-subject 6] [--seed 0] \
        [--edits elastic blend patch]

Pairs of slices 1-3 apart in the same volume (``<subject>/`` folders of PNG/NPY slices under SRC,
read like the benchmark builder reads them, :func:`deepssim.evaluation.benchmark.discover`; subjects
with at least 4 slices), the nearer slice quantised to 8 bit like every benchmark candidate.  A
neighbouring slice's label is its plain reference SSIM to the other (a registered volume: the
identity is the true alignment), so anything the verifier adds is optimism.  Reports the mean
bias (verified score - label):

- with the default verifier, for the clean slice and under one nuisance at a time (blur, noise,
  gamma + shading, rotation/zoom/shift, flip);
- on the clean slice with one of the verifier's nuisance models taken away (the noise discount, the
  fitted photometry, the blur softenings);
- on the clean slice with its freedoms taken away one after another: those three; then the
  photometric refinement; then the Gauss-Newton refinement (left: the coarse grid and the
  untransformed alignment);
- the *registration optimum*: no verifier at all, the plain reference SSIM (over the pixels both
  images show) maximised over small similarity transforms of the clean slice's partner — rotation,
  zoom and shift, Nelder-Mead from the identity, so a lower bound of the optimum.  It is what any
  score faithful to "the SSIM at the best alignment" must report at least; its bias to the label
  (the SSIM at the *registered* alignment) is therefore not the verifier's doing.

The same rows for clean structural edits of one slice (``--edits elastic blend patch``; each edit's
SSIM to the unedited slice, its label, bisected to a target in 0.65-0.82 like the benchmark
builder's *similar* edits).

Prints a markdown table; every row scores the same pairs against the same labels.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepssim.audit import verify  # noqa: E402
from deepssim.config import VerificationConfig  # noqa: E402
from deepssim.evaluation.benchmark import _quantise, discover, similar_edit  # noqa: E402
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


def edited_pairs(pairs, kind: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(slice, structural edit of it) for the first slice of each pair — ``kind`` "elastic",
    "blend" or "patch", the other image of a blend or patch edit the next pair's slice — each
    edit's SSIM to its slice bisected to a target in the *similar* band as the benchmark builder
    does it (:func:`deepssim.evaluation.benchmark.similar_edit`)."""
    rng = np.random.default_rng(seed)
    return [(reference, similar_edit(reference, pairs[(n + 1) % len(pairs)][0], kind,
                                     float(rng.uniform(0.65, 0.82)), seed + n)[0].astype(np.float32))
            for n, (reference, _) in enumerate(pairs)]


def registration_optimum(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Plain SSIM (no noise, photometry or blur model; pixels both show) of ``candidate`` and
    ``reference`` rotated, zoomed and shifted, maximised from the identity."""
    cand, ref = torch.from_numpy(candidate)[None, None].float(), torch.from_numpy(reference)[None, None].float()

    def loss(p):
        p = torch.tensor(p, dtype=torch.float32)
        warped, valid = verify._affine(ref, p[:1], p[1:2].exp(), p[None, 2:])
        return -float(verify.masked_ssim(warped, cand, valid)[0])

    simplex = np.array([[0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0.01, 0, 0], [0, 0, 0.5, 0], [0, 0, 0, 0.5]])
    found = minimize(loss, np.zeros(4), method="Nelder-Mead",
                     options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-5, "maxfev": 400})
    return max(-found.fun, -loss(np.zeros(4)))


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


def _label(candidate: np.ndarray, reference: np.ndarray) -> float:
    return reference_ssim(_quantise(candidate), reference)


def optimum_bias(pairs) -> float:
    return float(np.mean([registration_optimum(_quantise(c).astype(np.float32), r) - _label(c, r)
                          for r, c in pairs]))


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
            label = _label(neighbour, reference)
            candidate = _quantise(np.clip(nuisance(neighbour), 0, 1)).astype(np.float32)
            bias.append(verify.verify_pair(candidate, reference, config).score - label)
        return float(np.mean(bias))
    finally:
        for p in patches:
            p.stop()


def bias_table(pairs, what: str, nuisances: dict) -> list[str]:
    """Markdown rows: the default verifier under each nuisance, the freedoms taken away, the
    registration optimum."""
    default = VerificationConfig(workers=1)
    bare = replace(default, blur_sigmas=(0.0,), grid_factors=())
    clean = NUISANCES["none (the clean slice)"]
    rows = [f"| default | {what}, {name} | {mean_bias(pairs, nuisance, default):+.3f} |"
            for name, nuisance in nuisances.items()]
    for name, config, no_noise, no_fit in (("default without the noise discount", default, True, False),
                                           ("default without the fitted photometry", default, False, True),
                                           ("default without the blur softenings", bare, False, False)):
        rows.append(f"| {name} | {what}, none | {mean_bias(pairs, clean, config, no_noise, no_fit):+.3f} |")
    for name, config in (
            ("no noise discount, no fitted photometry, no blur softenings", bare),
            ("... and no photometric refinement", replace(bare, photometric_refine_steps=0)),
            ("... and no Gauss-Newton (coarse grid and the untransformed alignment)",
             replace(bare, photometric_refine_steps=0, refine_steps=0))):
        rows.append(f"| {name} | {what}, none | {mean_bias(pairs, clean, config, True, True):+.3f} |")
    rows.append(f"| none: the registration optimum of the plain SSIM | {what}, none | {optimum_bias(pairs):+.3f} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("--pairs-per-subject", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edits", nargs="*", default=[], choices=["elastic", "blend", "patch"],
                    help="also clean structural edits of one slice")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pairs = slice_pairs(args.src, args.pairs_per_subject, args.seed)
    lines = [f"{len(pairs)} pairs of slices 1-3 apart; mean bias of the verified score to the label", "",
             "| verifier | candidate, nuisance | bias |", "|---|---|---|"]
    lines += bias_table(pairs, "neighbouring slice", NUISANCES)
    clean = {k: v for k, v in NUISANCES.items() if k.startswith("none")}
    for kind in args.edits:
        lines += bias_table(edited_pairs(pairs, kind, args.seed), f"{kind} edit", clean)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
