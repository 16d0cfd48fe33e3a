"""Verification re-rank: the best *aligned* SSIM of a candidate against a training image.

The learned DeepSSIM score is a fast estimate; this module checks a candidate against
its few nearest training images with an explicit alignment search and the reference
SSIM (:mod:`deepssim.ssim`), and says which transform made them match.

What the score means
--------------------
``Alignment.score`` is the reference SSIM (z-scored, 7×7 window, scikit-image) between
the reference image and the candidate after the candidate has been

1. **histogram-matched** to the reference (undoes gamma / any monotonic contrast change),
2. **aligned**: one of the 8 flips/quarter-turns, a rotation from
   ``VerificationConfig.rotation_degrees`` refined by ±``FINE_STEP`` degrees, an isotropic
   zoom from ``COARSE_SCALES`` refined by ±``FINE_SCALE_STEP`` and a sub-pixel translation
   from phase correlation (within ±``MAX_SHIFT_FRACTION`` of the side),
3. **flat-field corrected**: a smooth multiplicative shading (exp of a quadratic, as MR
   coil bias fields are) fitted to the log-ratio of the two images is divided out,

with *both* images then compared at ``compare_size`` pixels after the same Gaussian
smoothing (``SMOOTH_SIGMA`` output pixels).  It is the maximum over the search, so it is
the SSIM of the best explanation "the candidate is this training image seen through a
nuisance transform".  Comparing at reduced resolution after matched smoothing is the
point: at full resolution a copy that is slightly blurred, noisy or shaded stays well
under 0.85 even when perfectly aligned (measured: see ``docs``/DESIGN.md), whereas
at 64 px the nuisance no longer dominates the local structure.  The price is that
structurally *edited* images (similar) score higher here than their full-resolution
aligned SSIM: compare verification scores with thresholds calibrated for them
(:func:`deepssim.calibrate.calibrate_from_benchmark`), not blindly with 0.60 / 0.85.

SSIM is averaged only over the pixels both fields of view cover (a shifted or zoomed copy
loses a border; see :func:`masked_ssim`, equal to the reference SSIM when nothing is lost).

Cost: a coarse ranking of all 8 × len(rotation_degrees) × len(COARSE_SCALES) hypotheses
at ``COARSE_SIZE`` (32 px) by FFT cross-correlation, then full scoring of 9 refinements of
each of the best ``REFINE_TOP`` at ``compare_size``; each stage is one torch batch
(measured ~27–30 ms per 128 px pair on one core of a shared 2-core machine).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import VerificationConfig

COARSE_SIZE = 32
REFINE_TOP = 3
FINE_STEP = 2.0
COARSE_SCALES = (0.9, 1.0, 1.1)
FINE_SCALE_STEP = 0.035
SMOOTH_SIGMA = 0.7
MAX_SHIFT_FRACTION = 0.25
FIELD_SIZE = 16
MAX_LOG_BIAS = 0.5  # the shading corrected is at most exp(±0.5): more made copies worse, unrelated pairs better

# (horizontal flip, quarter turns): the 8 symmetries of the square.
DIHEDRAL: tuple[tuple[bool, int], ...] = tuple((f, k) for f in (False, True) for k in range(4))


@dataclass(frozen=True)
class Alignment:
    """Result of a verification: ``score`` is the best aligned SSIM in [-1, 1] (see the
    module docstring), ``transform`` a readable description of the candidate -> reference
    mapping, e.g. ``"flip-h, rot90×1, rotate -8°, zoom 1.05, shift (3.0,-2.0) px,
    hist-matched, flat-field"``."""

    score: float
    transform: str
    dihedral: tuple[bool, int] = (False, 0)
    degrees: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class _Hypothesis:
    flip: bool
    turns: int
    degrees: float
    scale: float


# --------------------------------------------------------------------------- image helpers

def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(S, S) array -> (1, 1, S, S) float32 tensor."""
    return torch.tensor(np.asarray(image), dtype=torch.float32)[None, None]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, size, size), area-averaged when shrinking."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > size)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def _dihedral(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    """Flip (left-right) then turn by ``turns`` × 90° counter-clockwise; (B, 1, S, S)."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


_BASE_GRIDS: dict[int, torch.Tensor] = {}


def _base_grid(size: int) -> torch.Tensor:
    """(size*size, 3) homogeneous pixel-centre coordinates in [-1, 1] (align_corners=False)."""
    if size not in _BASE_GRIDS:
        lin = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        _BASE_GRIDS[size] = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(-1, 3)
    return _BASE_GRIDS[size]


def _affine(x: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor,
            shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``degrees`` (B,), zoom by ``scale`` (B,) about the centre and translate by
    ``shift`` (B, 2) pixels (dy, dx); bilinear, zero padding.  x: (B, 1, S, S).
    Returns the warped images and a (B, 1, S, S) bool mask of the pixels that sample
    wholly inside the input's field of view."""
    n, size = x.shape[0], x.shape[-1]
    a = degrees * math.pi / 180
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    if shift is None:
        shift = torch.zeros(n, 2)
    # the grid maps output -> input: undo the translation, then the rotation/zoom.
    ty, tx = -2 * shift[:, 0] / size, -2 * shift[:, 1] / size
    theta = torch.stack([torch.stack([cos, -sin, cos * tx - sin * ty], 1),
                         torch.stack([sin, cos, sin * tx + cos * ty], 1)], 1)  # (B, 2, 3)
    grid = (_base_grid(size) @ theta.transpose(1, 2)).view(n, size, size, 2)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = (grid.abs() <= 1 - 1 / size + 1e-6).all(-1).unsqueeze(1)
    return warped, valid


def _phase_shift(reference: torch.Tensor, moving: torch.Tensor, max_shift: float) -> torch.Tensor:
    """Translation (B, 2) in pixels (dy, dx) that moves each ``moving`` onto ``reference``,
    by phase correlation with a parabolic sub-pixel peak; both (B, 1, S, S)."""
    size = reference.shape[-1]
    fr = torch.fft.rfft2(reference - reference.mean(dim=(-2, -1), keepdim=True))
    fm = torch.fft.rfft2(moving - moving.mean(dim=(-2, -1), keepdim=True))
    cross = fr * fm.conj()
    corr = torch.fft.irfft2(cross / cross.abs().clamp_min(1e-9), s=(size, size))[:, 0]
    freq = torch.fft.fftfreq(size) * size  # signed pixel offsets
    bad = (freq.abs() > max_shift)
    corr = corr.masked_fill(bad.view(1, -1, 1) | bad.view(1, 1, -1), -1e9)
    flat = corr.flatten(1).argmax(1)
    iy, ix = flat // size, flat % size
    b = torch.arange(corr.shape[0])

    def subpixel(c_minus, c0, c_plus):
        denom = c_minus - 2 * c0 + c_plus
        return torch.where(denom.abs() > 1e-12, 0.5 * (c_minus - c_plus) / denom,
                           torch.zeros_like(c0)).clamp(-0.5, 0.5)

    dy = freq[iy] + subpixel(corr[b, (iy - 1) % size, ix], corr[b, iy, ix], corr[b, (iy + 1) % size, ix])
    dx = freq[ix] + subpixel(corr[b, iy, (ix - 1) % size], corr[b, iy, ix], corr[b, iy, (ix + 1) % size])
    return torch.stack([dy, dx], 1)


def histogram_match(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Monotonic intensity remap of ``candidate`` so its histogram equals ``reference``'s
    (undoes gamma and window changes).  Both (S, S) float; returns float32 (S, S)."""
    from skimage.exposure import match_histograms

    return match_histograms(candidate, reference).astype(np.float32)


def _quadratic_basis(size: int) -> torch.Tensor:
    """(size*size, 6) monomials 1, x, y, x², y², xy on a [-1, 1] pixel-centre grid."""
    lin = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([torch.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy]).flatten(1).T


def flat_field(candidate: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor | None = None,
               floor: float = 0.15) -> torch.Tensor:
    """Divide out a smooth shading (an MR coil bias field).

    Both images are reduced to ``FIELD_SIZE`` px (area average: the shading is smooth, the
    anatomy is not), ``log(candidate / reference) ≈ quadratic(x, y)`` is fitted there by
    least squares weighted by the reference intensity, on pixels where both exceed
    ``floor`` × their maximum and lie in ``valid`` (the candidate's warped field of view),
    and ``candidate / exp(fit)`` is returned, the fit clamped to ±``MAX_LOG_BIAS``.  A
    quadratic has 6 degrees of freedom, too few to make unrelated anatomy agree.

    Args: candidate (B, 1, S, S) and reference (1 or B, 1, S, S) in [0, 1]; valid
    (B, 1, S, S) bool or None.  Returns (B, 1, S, S)."""
    n, size = candidate.shape[0], candidate.shape[-1]
    c = _resize(candidate, FIELD_SIZE).flatten(1)
    r = _resize(reference, FIELD_SIZE).flatten(1).expand(n, -1)
    w = ((c > floor * c.amax(1, keepdim=True)) & (r > floor * r.amax(1, keepdim=True))).float() * r
    if valid is not None:
        w = w * (_resize(valid.float(), FIELD_SIZE).flatten(1) > 0.999).float()
    basis = _quadratic_basis(FIELD_SIZE)
    ratio = torch.log(c.clamp_min(1e-4)) - torch.log(r.clamp_min(1e-4))
    wb = basis.unsqueeze(0) * w.unsqueeze(-1)  # (B, P, 6)
    gram = wb.transpose(1, 2) @ basis + 1e-2 * torch.eye(6)
    coef = torch.linalg.solve(gram, wb.transpose(1, 2) @ ratio.unsqueeze(-1))  # (B, 6, 1)
    field = (_quadratic_basis(size) @ coef).squeeze(-1).clamp(-MAX_LOG_BIAS, MAX_LOG_BIAS)
    return candidate / torch.exp(field).view_as(candidate)


def _box_filter(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """'Valid' running mean of ``width`` samples along ``dim`` (cumulative sums: O(1) per
    pixel, much faster on CPU than ``avg_pool2d``)."""
    c = x.cumsum(dim)
    head = c.narrow(dim, width - 1, 1)
    diff = c.narrow(dim, width, c.shape[dim] - width) - c.narrow(dim, 0, c.shape[dim] - width)
    return torch.cat([head, diff], dim) / width


def masked_ssim(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None,
                terms: str = "ssim") -> torch.Tensor:
    """The reference SSIM restricted to a region.

    Each image is z-scored over its ``valid`` pixels, the SSIM map is computed with the
    reference constants (7×7 uniform window, sample covariance, data range of ``a``) and
    averaged over the windows lying wholly inside ``valid``.  With ``valid`` all true this
    equals :func:`deepssim.ssim.ssim_torch` (and scikit-image) exactly.

    Args:
        a, b: (B, 1, s, s) float tensors; ``valid``: (B, 1, s, s) bool or None (all valid).
    Returns:
        (B,) SSIM in [-1, 1] (dtype of ``a``).
    """
    from .ssim import K1, K2, WINDOW

    if valid is None:
        valid = torch.ones_like(a, dtype=torch.bool)
    w = valid.to(a.dtype)
    count = w.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)

    def standardise(x):
        mean = (x * w).sum(dim=(1, 2, 3), keepdim=True) / count
        var = (((x - mean) * w) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count
        return (x - mean) / var.sqrt().clamp_min(1e-12) * w

    a, b = standardise(a), standardise(b)
    big = torch.finfo(a.dtype).max
    hi = torch.where(valid, a, torch.full_like(a, -big)).amax(dim=(1, 2, 3))
    lo = torch.where(valid, a, torch.full_like(a, big)).amin(dim=(1, 2, 3))
    data_range = (hi - lo).view(-1, 1, 1, 1)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    cov_norm = WINDOW * WINDOW / (WINDOW * WINDOW - 1.0)

    # one separable 7×7 box filter over all six maps at once
    stack = torch.cat([a, b, a * a, b * b, a * b, w], dim=1)
    means = _box_filter(_box_filter(stack, WINDOW, -1), WINDOW, -2)
    ux, uy, uxx, uyy, uxy, uw = means.split(1, dim=1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    if terms == "ssim":
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    elif terms == "cs":  # contrast x structure (no luminance term)
        s = (2 * vxy + c2) / (vx + vy + c2)
    elif terms == "s":  # structure only: local correlation
        s = (vxy + c2 / 2) / ((vx.clamp_min(0) * vy.clamp_min(0)).sqrt() + c2 / 2)
    else:
        raise ValueError(f"unknown SSIM terms {terms!r}")
    inside = (uw > 1 - 1e-6).to(a.dtype)
    return (s * inside).sum(dim=(1, 2, 3)) / inside.sum(dim=(1, 2, 3)).clamp_min(1.0)


# --------------------------------------------------------------------------- search stages

def _stage(candidate: torch.Tensor, reference: torch.Tensor, hyps: list[_Hypothesis],
           correct_bias: bool, sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every hypothesis at the resolution of the inputs.

    ``candidate``: (1, 1, s, s), already histogram-matched; ``reference``: (1, 1, s, s).
    Returns scores (H,), shifts (H, 2) in pixels of this resolution, the compared views
    (H, 1, s, s) and their validity masks (H, 1, s, s)."""
    size = reference.shape[-1]
    turned = torch.cat([_dihedral(candidate, h.flip, h.turns) for h in hyps])
    degrees = torch.tensor([h.degrees for h in hyps], dtype=torch.float32)
    scales = torch.tensor([h.scale for h in hyps], dtype=torch.float32)
    rotated, _ = _affine(turned, degrees, scales)
    shifts = _phase_shift(reference.expand_as(rotated), rotated, MAX_SHIFT_FRACTION * size)
    warped, valid = _affine(turned, degrees, scales, shifts)
    if correct_bias:
        warped = flat_field(warped, reference, valid)
    views = _gaussian_blur(warped, sigma)
    ref_view = _gaussian_blur(reference, sigma).expand_as(views)
    scores = masked_ssim(views, ref_view, valid)
    return scores, shifts, views, valid


def _coarse_scores(candidate: torch.Tensor, reference: torch.Tensor,
                   hyps: list[_Hypothesis]) -> torch.Tensor:
    """Cheap ranking of many hypotheses: the peak normalised cross-correlation (over shifts
    within ``MAX_SHIFT_FRACTION``) of each rotated candidate with the reference, by FFT.
    Inputs (1, 1, s, s); returns (H,) in [-1, 1]."""
    size = reference.shape[-1]
    turned = torch.cat([_dihedral(candidate, h.flip, h.turns) for h in hyps])
    degrees = torch.tensor([h.degrees for h in hyps], dtype=torch.float32)
    scales = torch.tensor([h.scale for h in hyps], dtype=torch.float32)
    rotated, _ = _affine(turned, degrees, scales)

    def unit(x):
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        return x / x.flatten(1).norm(dim=1).clamp_min(1e-9).view(-1, 1, 1, 1)

    corr = torch.fft.irfft2(torch.fft.rfft2(unit(reference)) * torch.fft.rfft2(unit(rotated)).conj(),
                            s=(size, size))[:, 0]
    freq = (torch.fft.fftfreq(size) * size).abs() > MAX_SHIFT_FRACTION * size
    corr = corr.masked_fill(freq.view(1, -1, 1) | freq.view(1, 1, -1), -1.0)
    return corr.flatten(1).amax(1)


def _coarse_hypotheses(config: VerificationConfig) -> list[_Hypothesis]:
    return [_Hypothesis(f, k, float(d), sc) for f, k in DIHEDRAL for d in config.rotation_degrees
            for sc in COARSE_SCALES]


def _fine_hypotheses(seeds: list[_Hypothesis]) -> list[_Hypothesis]:
    return [_Hypothesis(s.flip, s.turns, s.degrees + dd, round(s.scale + ds, 3))
            for s in seeds for dd in (-FINE_STEP, 0.0, FINE_STEP)
            for ds in (-FINE_SCALE_STEP, 0.0, FINE_SCALE_STEP)]


def describe(h: _Hypothesis, shift: tuple[float, float]) -> str:
    """Readable candidate -> reference transform."""
    parts = []
    if h.flip:
        parts.append("flip-h")
    if h.turns:
        parts.append(f"rot90×{h.turns}")
    if h.degrees:
        parts.append(f"rotate {h.degrees:+g}°")
    if h.scale != 1.0:
        parts.append(f"zoom {h.scale:g}")
    parts.append(f"shift ({shift[0]:+.1f},{shift[1]:+.1f}) px")
    parts += ["hist-matched", "flat-field"]
    return ", ".join(parts)


def _equalise(x: torch.Tensor) -> torch.Tensor:
    """Rank transform (histogram equalisation) of each (1, 1, s, s) image to [0, 1]: the
    same for any monotonic contrast change, and — unlike matching one image's histogram to
    another's — not distorted when the two fields of view differ (a shifted or zoomed-out
    copy carries a zero border the training image does not have)."""
    flat = x.flatten(1)
    ranks = flat.argsort(1).argsort(1).to(x.dtype) / max(flat.shape[1] - 1, 1)
    return ranks.view_as(x)


def _match_in_region(moving: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Monotonic remap of each ``moving`` (B, 1, s, s) so that its intensities inside
    ``valid`` follow the distribution of ``reference`` (1, 1, s, s) inside the same
    region (quantile matching on the pixels both images show after alignment)."""
    out = moving.clone()
    ref = reference[0, 0]
    for b in range(moving.shape[0]):
        m = valid[b, 0]
        if int(m.sum()) < 16:
            continue
        values = moving[b, 0][m]
        target = ref[m].sort().values
        ranks = values.argsort().argsort().to(values.dtype) / max(len(values) - 1, 1)
        idx = ranks * (len(target) - 1)
        lo = idx.floor().long()
        hi = idx.ceil().long()
        w = idx - lo
        mapped = target[lo] * (1 - w) + target[hi] * w
        img = out[b, 0]
        img[m] = mapped
    return out


def _masked_ncc(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of (B, 1, s, s) over ``valid`` pixels; (B,)."""
    w = valid.to(a.dtype)
    n = w.sum(dim=(1, 2, 3)).clamp_min(1.0)
    ma = (a * w).sum(dim=(1, 2, 3)) / n
    mb = (b * w).sum(dim=(1, 2, 3)) / n
    da = (a - ma.view(-1, 1, 1, 1)) * w
    db = (b - mb.view(-1, 1, 1, 1)) * w
    return (da * db).sum(dim=(1, 2, 3)) / ((da * da).sum(dim=(1, 2, 3)) * (db * db).sum(dim=(1, 2, 3))
                                         ).sqrt().clamp_min(1e-9)


def _refine(turned: torch.Tensor, reference: torch.Tensor, degrees: torch.Tensor, scales: torch.Tensor,
            shifts: torch.Tensor, steps: int, sigma: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Continuous local refinement of rotation, zoom and shift of each hypothesis by
    gradient ascent (Adam) on the masked normalised cross-correlation of the smoothed,
    rank-equalised images.  A grid of rotations and zooms only brackets the true transform
    (a 1° or 2 % error already costs a copy ~0.1 SSIM at the image border); this closes the
    gap in ``steps`` small batched iterations.  Inputs at compare size: ``turned``
    (B, 1, s, s) (flip/turn applied), ``reference`` (1, 1, s, s); returns refined degrees
    (B,), scales (B,) and shifts (B, 2) in pixels."""
    if steps <= 0:
        return degrees, scales, shifts
    ref = _gaussian_blur(reference, sigma).expand_as(turned)
    mov = _gaussian_blur(turned, sigma)
    deg = degrees.clone().requires_grad_(True)
    logs = (100 * torch.log(scales)).clone().requires_grad_(True)  # percent
    sh = shifts.clone().requires_grad_(True)
    opt = torch.optim.Adam([deg, logs, sh], lr=0.15)
    for _ in range(steps):
        opt.zero_grad()
        warped, valid = _affine(mov, deg, torch.exp(logs / 100), sh)
        loss = -_masked_ncc(warped, ref, valid).sum()
        loss.backward()
        opt.step()
    return deg.detach(), torch.exp(logs.detach() / 100), sh.detach()


def verify_pair(candidate: np.ndarray, reference: np.ndarray,
                config: VerificationConfig = VerificationConfig()) -> Alignment:
    """Best aligned SSIM of ``candidate`` against ``reference``.

    Args:
        candidate, reference: (S, S) float arrays in [0, 1] (model inputs), same shape.
        config: rotation grid, ``compare_size`` (the side at which SSIM is taken) and
            ``refine_steps`` (continuous refinement iterations; 0 = grid only).
    Returns:
        :class:`Alignment` — ``score`` in [-1, 1] (module docstring) and the transform.
    """
    candidate = np.asarray(candidate, np.float32)
    reference = np.asarray(reference, np.float32)
    if candidate.shape != reference.shape or candidate.ndim != 2 or candidate.shape[0] != candidate.shape[1]:
        raise ValueError(f"need two equal square 2D images, got {candidate.shape} and {reference.shape}")
    if reference.std() == 0 or candidate.std() == 0:
        return Alignment(0.0, "constant image: nothing to align")
    with torch.no_grad():
        cand = _to_tensor(candidate)
        ref = _to_tensor(reference)
        cand_eq, ref_eq = _equalise(cand), _equalise(ref)
        coarse = _coarse_hypotheses(config)
        scores = _coarse_scores(_resize(cand_eq, COARSE_SIZE), _resize(ref_eq, COARSE_SIZE), coarse)
        seeds = [coarse[i] for i in scores.argsort(descending=True)[:REFINE_TOP].tolist()]
        fine = _fine_hypotheses(seeds)
        size = config.compare_size
        cand_small, ref_small = _resize(cand_eq, size), _resize(ref_eq, size)
        scores, shifts, _, _ = _stage(cand_small, ref_small, fine, correct_bias=False, sigma=SMOOTH_SIGMA)
        keep = scores.argsort(descending=True)[:REFINE_TOP].tolist()
        hyps = [fine[i] for i in keep]
        turned = torch.cat([_dihedral(cand_small, h.flip, h.turns) for h in hyps])
        degrees = torch.tensor([h.degrees for h in hyps], dtype=torch.float32)
        scales = torch.tensor([h.scale for h in hyps], dtype=torch.float32)
        shifts = shifts[keep]
    with torch.enable_grad():
        degrees, scales, shifts = _refine(turned, ref_small, degrees, scales, shifts,
                                          config.refine_steps, SMOOTH_SIGMA)
    with torch.no_grad():
        # final scoring on the original intensities: align, quantile-match inside the
        # common field of view, divide out a smooth shading, smooth both alike, SSIM.
        raw = _resize(cand, size)
        raw_turned = torch.cat([_dihedral(raw, h.flip, h.turns) for h in hyps])
        ref_raw = _resize(ref, size)
        warped, valid = _affine(raw_turned, degrees, scales, shifts)
        warped = _match_in_region(warped, ref_raw, valid)
        warped = flat_field(warped, ref_raw, valid)
        views = _gaussian_blur(warped, SMOOTH_SIGMA)
        ref_view = _gaussian_blur(ref_raw, SMOOTH_SIGMA)
        final = masked_ssim(views.double(), ref_view.double().expand_as(views), valid, config.terms)
        best = int(final.argmax())
        score = float(final[best])
    h = hyps[best]
    h = _Hypothesis(h.flip, h.turns, round(float(degrees[best]), 1), round(float(scales[best]), 3))
    shift = tuple(float(v) * (candidate.shape[0] / size) for v in shifts[best])
    return Alignment(score=score, transform=describe(h, shift), dihedral=(h.flip, h.turns),
                     degrees=h.degrees, scale=h.scale, shift=shift)


def verify_candidates(candidates: np.ndarray, references: np.ndarray,
                      config: VerificationConfig = VerificationConfig()
                      ) -> tuple[np.ndarray, list[list[Alignment]]]:
    """Verify each candidate against each of its ``k`` references.

    Args:
        candidates: (Q, S, S) float in [0, 1].
        references: (Q, k, S, S) float in [0, 1] — e.g. the top-k training images by embedding.
    Returns:
        scores (Q, k) float32 and the matching ``Alignment`` objects (Q lists of k).
    """
    candidates, references = np.asarray(candidates), np.asarray(references)
    if references.ndim != 4 or references.shape[0] != candidates.shape[0]:
        raise ValueError(f"references must be (Q, k, S, S) with Q={candidates.shape[0]}, "
                         f"got {references.shape}")
    alignments = [[verify_pair(c, r, config) for r in refs] for c, refs in zip(candidates, references)]
    scores = np.array([[a.score for a in row] for row in alignments], dtype=np.float32)
    return scores.reshape(references.shape[:2]), alignments
