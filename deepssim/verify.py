"""Verification re-rank: the best *aligned* SSIM of a candidate against a training image.

The learned DeepSSIM score is a fast estimate; this module checks a candidate against
its few nearest training images with an explicit alignment search and the reference
SSIM terms (:mod:`deepssim.ssim`), and says which transform made them match.

What the score means
--------------------
``Alignment.score`` estimates the reference SSIM the candidate would have with the
training image *if the candidate's nuisances were undone* — the "aligned SSIM" the
labels are defined on.  It is computed in the **candidate's frame** by a forward model
of the training image:

1. **alignment search** (at ``compare_size`` px, rank-equalised so any monotonic contrast
   change is irrelevant): the best rotation / zoom of each of the 8 flips/quarter-turns
   (one seed per symmetry, so a near-symmetric anatomy cannot crowd the true flip out),
   sub-pixel translation by phase correlation, then continuous refinement (Adam on the
   normalised cross-correlation) at ``compare_size`` and again at full resolution;
2. the training image is **warped into the candidate's frame** with the transform found
   (the same bilinear resampling that made a geometric copy, so interpolation blur is
   reproduced rather than compared against);
3. **photometry**: ``log c ≈ a + γ·log r + quadratic(x, y)`` is fitted by least squares
   (a gamma / window change followed by a smooth coil shading), and the training image
   is mapped through it;
4. **blur**: the mapped image is blurred by each of ``blur_sigmas`` (the copy may be
   smoother than its source) and the best is kept;
5. **noise**: the candidate's white-noise variance is estimated (robust MAD of a
   Laplacian-difference filter) and subtracted from its local variances inside the SSIM
   formula, so additive noise does not count as a structural difference;
6. SSIM (``terms``: the full reference formula by default) at full resolution after a
   common smoothing of ``smoothing`` px, averaged over the windows both images show
   (pixels outside the warped field of view and saturated candidate pixels — whose
   structure a window/level change destroyed — are left out; :func:`masked_ssim`).

It is the maximum over the hypotheses kept and the blur levels, clipped to [-1, 1]: the
SSIM of the best explanation "the candidate is this training image seen through a
nuisance transform".  A structural edit (deformation, blend, replaced patch) is none of
these nuisances and keeps lowering the score, which is what separates *similar* from
*duplicate* (measured in BENCHMARKS.md, "Detection quality").

Cost: the search runs twice (on the images as they are and lightly smoothed, see
:func:`_hypotheses`), each a coarse ranking of 8 × len(rotation_degrees) ×
len(COARSE_SCALES) hypotheses at ``COARSE_SIZE`` (32 px) by FFT cross-correlation, 72
scored refinements at ``compare_size`` and ``refine_steps`` + ``full_refine_steps``
batched gradient steps on the best ``REFINE_TOP``; then one batched scoring of the 12
alignments kept per blur level: ~0.5 s per 128 px pair on one core of a shared 2-core
machine.
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
SMOOTH_SIGMA = 0.7  # smoothing (px at compare_size) of the images the search compares
MAX_SHIFT_FRACTION = 0.25
SEARCH_DENOISE = 1.0  # smoothing (full-resolution px) before rank equalisation, which would magnify noise
FULL_REFINE_SIGMA = 1.0  # smoothing (full-resolution px) of the full-resolution refinement
POLISH_ROUNDS = 8  # rounds of the pattern search on the final score
SATURATED = 1 - 0.5 / 255  # candidate pixels at or above this lost their structure to clipping
MAX_LOG_FIELD = 2.0  # the shading fitted is at most exp(±2), the range of the benchmark's bias fields

# (horizontal flip, quarter turns): the 8 symmetries of the square.
DIHEDRAL: tuple[tuple[bool, int], ...] = tuple((f, k) for f in (False, True) for k in range(4))


@dataclass(frozen=True)
class Alignment:
    """Result of a verification: ``score`` is the best aligned SSIM in [-1, 1] (see the
    module docstring), ``transform`` a readable description of the candidate -> reference
    mapping, e.g. ``"flip-h, rot90×1, rotate -8°, zoom 1.05, shift (3.0,-2.0) px,
    gamma+shading fitted, blur 0.8 px, noise sd 0.012"``."""

    score: float
    transform: str
    dihedral: tuple[bool, int] = (False, 0)
    degrees: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    blur_sigma: float = 0.0
    noise_sd: float = 0.0


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


def _gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, x.dtype)
    radius = len(k) // 2
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def _noise_gain(sigma: float) -> float:
    """Factor by which a Gaussian blur of ``sigma`` px scales the variance of white noise."""
    return float((_gaussian_kernel(sigma, torch.float64) ** 2).sum()) ** 2 if sigma > 0 else 1.0


def _dihedral(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    """Flip (left-right) then turn by ``turns`` × 90° counter-clockwise; (B, 1, S, S)."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def _undo_dihedral(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    """Inverse of :func:`_dihedral`."""
    if turns:
        x = torch.rot90(x, -turns, dims=(-2, -1))
    return x.flip(-1) if flip else x


_BASE_GRIDS: dict[int, torch.Tensor] = {}


def _base_grid(size: int) -> torch.Tensor:
    """(size*size, 3) homogeneous pixel-centre coordinates in [-1, 1] (align_corners=False)."""
    if size not in _BASE_GRIDS:
        lin = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        _BASE_GRIDS[size] = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(-1, 3)
    return _BASE_GRIDS[size]


def _theta(degrees: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 2, 3) sampling matrices mapping reference-frame coordinates to (turned)
    candidate coordinates for a rotation by ``degrees``, zoom ``scale`` about the centre
    and translation ``shift`` (B, 2) pixels (dy, dx) at side ``size``."""
    a = degrees * math.pi / 180
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    # the grid maps output -> input: undo the translation, then the rotation/zoom.
    ty, tx = -2 * shift[:, 0] / size, -2 * shift[:, 1] / size
    return torch.stack([torch.stack([cos, -sin, cos * tx - sin * ty], 1),
                        torch.stack([sin, cos, sin * tx + cos * ty], 1)], 1)


def _sample(x: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resampling of (B or 1, 1, S, S) through (B, 2, 3) ``theta`` (zero padding);
    returns the images and a (B, 1, S, S) bool mask of pixels sampled inside the input."""
    n, size = theta.shape[0], x.shape[-1]
    grid = (_base_grid(size) @ theta.transpose(1, 2)).view(n, size, size, 2)
    warped = F.grid_sample(x.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    valid = (grid.abs() <= 1 - 1 / size + 1e-6).all(-1).unsqueeze(1)
    return warped, valid


def _affine(x: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor,
            shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``degrees`` (B,), zoom by ``scale`` (B,) about the centre and translate by
    ``shift`` (B, 2) pixels (dy, dx); bilinear, zero padding.  x: (B, 1, S, S).
    Returns the warped images and a (B, 1, S, S) bool mask of the pixels that sample
    wholly inside the input's field of view."""
    if shift is None:
        shift = torch.zeros(x.shape[0], 2)
    return _sample(x, _theta(degrees, scale, shift, x.shape[-1]))


def _reference_in_candidate_frame(reference: torch.Tensor, hyps: list[_Hypothesis], degrees: torch.Tensor,
                                  scales: torch.Tensor, shifts: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of each hypothesis' candidate -> reference mapping applied to the
    reference (1, 1, S, S): (H, 1, S, S) images in the candidate's frame and their masks
    of pixels the reference covers.  ``shifts`` (H, 2) in full-resolution pixels."""
    theta = _theta(degrees, scales, shifts, reference.shape[-1])
    inverse = torch.linalg.inv(theta[:, :, :2])
    warped, valid = _sample(reference, torch.cat([inverse, -inverse @ theta[:, :, 2:]], 2))
    undo = [( _undo_dihedral(warped[i:i + 1], h.flip, h.turns), _undo_dihedral(valid[i:i + 1], h.flip, h.turns))
            for i, h in enumerate(hyps)]
    return torch.cat([w for w, _ in undo]), torch.cat([v for _, v in undo])


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


def _quadratic_basis(size: int) -> torch.Tensor:
    """(size*size, 6) monomials 1, x, y, x², y², xy on a [-1, 1] pixel-centre grid."""
    lin = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([torch.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy]).flatten(1).T


def photometric_fit(candidate: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor,
                    floor: float = 0.05) -> torch.Tensor:
    """Map each ``reference`` into the candidate's photometry.

    Fits ``log c = a + γ·log r + quadratic(x, y)`` (a gamma / window change, then a smooth
    multiplicative shading such as an MR coil bias field) by least squares weighted by the
    reference intensity, on the pixels of ``valid`` where both exceed ``floor`` and the
    candidate is not saturated, and returns ``exp(a + γ·log r + quadratic)`` clipped to
    [0, 1].  Eight degrees of freedom: too few to make unrelated anatomy agree.

    Args: candidate (B or 1, 1, S, S) and reference (B, 1, S, S) in [0, 1]; valid
    (B, 1, S, S) bool.  Returns (B, 1, S, S); a reference with too few usable pixels
    is returned unchanged."""
    n, size = reference.shape[0], reference.shape[-1]
    basis = _quadratic_basis(size)
    c_all = candidate.expand(n, -1, -1, -1).flatten(1)
    out = []
    for i in range(n):
        c, r = c_all[i], reference[i, 0].flatten()
        use = valid[i, 0].flatten() & (c > floor) & (r > floor) & (c < SATURATED)
        if int(use.sum()) < 8 * basis.shape[1]:
            out.append(reference[i:i + 1])
            continue
        design = torch.cat([torch.log(r.clamp_min(1e-4)).unsqueeze(1), basis], 1)
        weight = r[use].unsqueeze(1)
        # float64: LAPACK's float32 result varies by ~1e-6 from call to call with its
        # workspace, which made repeated audits differ in the 6th decimal
        coef = torch.linalg.lstsq((design[use] * weight).double(),
                                  (torch.log(c[use]).unsqueeze(1) * weight).double()).solution[:, 0].float()
        gamma = coef[0].clamp(0.3, 3.0)
        field = (basis @ coef[1:]).clamp(-MAX_LOG_FIELD, MAX_LOG_FIELD)
        mapped = torch.exp(gamma * torch.log(r.clamp_min(1e-6)) + field).clamp(0, 1)
        out.append(mapped.view(1, 1, size, size))
    return torch.cat(out)


def noise_sd(image: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Standard deviation of additive white noise in a (1, 1, S, S) image: the median
    absolute response of the Laplacian-difference filter [[1,-2,1],[-2,4,-2],[1,-2,1]]
    (Immerkær 1996), which cancels smooth anatomy, divided by its noise gain 6 × 0.6745.
    ``valid`` (1, 1, S, S) bool restricts it to a region."""
    kernel = torch.tensor([[1., -2., 1.], [-2., 4., -2.], [1., -2., 1.]], dtype=image.dtype)
    response = F.conv2d(image, kernel.view(1, 1, 3, 3))[0, 0].abs()
    if valid is not None:
        inner = valid[0, 0, 1:-1, 1:-1]
        response = response[inner] if int(inner.sum()) >= 16 else response.flatten()
    return float(response.median()) / (6 * 0.6745)


def _box_filter(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """'Valid' running mean of ``width`` samples along ``dim`` (cumulative sums: O(1) per
    pixel, much faster on CPU than ``avg_pool2d``)."""
    c = x.cumsum(dim)
    head = c.narrow(dim, width - 1, 1)
    diff = c.narrow(dim, width, c.shape[dim] - width) - c.narrow(dim, 0, c.shape[dim] - width)
    return torch.cat([head, diff], dim) / width


def masked_ssim(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None,
                terms: str = "ssim", noise_var_b: torch.Tensor | float | None = None) -> torch.Tensor:
    """The reference SSIM restricted to a region.

    Each image is z-scored over its ``valid`` pixels, the SSIM map is computed with the
    reference constants (7×7 uniform window, sample covariance, data range of ``a``) and
    averaged over the windows lying wholly inside ``valid``.  With ``valid`` all true and
    no ``noise_var_b`` this equals :func:`deepssim.ssim.ssim_torch` (and scikit-image)
    exactly.  ``noise_var_b`` (intensity units², scalar or (B,)): the variance of white
    noise known to be in ``b``, subtracted from its local variances (independent noise
    adds to a variance, not to a covariance), so the score is that of the noise-free image.

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
        sd = ((((x - mean) * w) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count).sqrt().clamp_min(1e-12)
        return (x - mean) / sd * w, sd

    a, _ = standardise(a)
    b, sd_b = standardise(b)
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
    if noise_var_b is not None:
        noise = torch.as_tensor(noise_var_b, dtype=a.dtype).reshape(-1, 1, 1, 1)
        vy = (vy - noise / sd_b ** 2).clamp_min(0)
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

def _angles(hyps: list[_Hypothesis]) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid rotations (H,) in degrees and zooms (H,) of the hypotheses."""
    return (torch.tensor([h.degrees for h in hyps], dtype=torch.float32),
            torch.tensor([h.scale for h in hyps], dtype=torch.float32))


def _turned(candidate: torch.Tensor, hyps: list[_Hypothesis]) -> torch.Tensor:
    """(1, 1, s, s) -> (H, 1, s, s): the flip/turn of each hypothesis applied."""
    return torch.cat([_dihedral(candidate, h.flip, h.turns) for h in hyps])


def _stage(candidate: torch.Tensor, reference: torch.Tensor, hyps: list[_Hypothesis],
           sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every hypothesis at the resolution of the inputs (both (1, 1, s, s),
    rank-equalised): the SSIM of the smoothed images after the hypothesis' rotation/zoom
    and the phase-correlation shift.  Returns scores (H,) and shifts (H, 2) in pixels."""
    size = reference.shape[-1]
    turned = _turned(candidate, hyps)
    degrees, scales = _angles(hyps)
    rotated, _ = _affine(turned, degrees, scales)
    shifts = _phase_shift(reference.expand_as(rotated), rotated, MAX_SHIFT_FRACTION * size)
    warped, valid = _affine(turned, degrees, scales, shifts)
    views = _gaussian_blur(warped, sigma)
    ref_view = _gaussian_blur(reference, sigma).expand_as(views)
    return masked_ssim(views, ref_view, valid), shifts


def _coarse_scores(candidate: torch.Tensor, reference: torch.Tensor,
                   hyps: list[_Hypothesis]) -> torch.Tensor:
    """Cheap ranking of many hypotheses: the peak normalised cross-correlation (over shifts
    within ``MAX_SHIFT_FRACTION``) of each rotated candidate with the reference, by FFT.
    Inputs (1, 1, s, s); returns (H,) in [-1, 1]."""
    size = reference.shape[-1]
    turned = _turned(candidate, hyps)
    degrees, scales = _angles(hyps)
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


def _seeds(hyps: list[_Hypothesis], scores: torch.Tensor) -> list[_Hypothesis]:
    """The best-scoring hypothesis of each of the 8 symmetries: a near-symmetric anatomy
    (a brain's two hemispheres) makes the wrong flip score almost as well as the right one
    at coarse resolution, and must not crowd it out of the refinement."""
    best: dict[tuple[bool, int], int] = {}
    for i, h in enumerate(hyps):
        key = (h.flip, h.turns)
        if key not in best or scores[i] > scores[best[key]]:
            best[key] = i
    return [hyps[i] for i in best.values()]


def _fine_hypotheses(seeds: list[_Hypothesis]) -> list[_Hypothesis]:
    return [_Hypothesis(s.flip, s.turns, s.degrees + dd, round(s.scale + ds, 3))
            for s in seeds for dd in (-FINE_STEP, 0.0, FINE_STEP)
            for ds in (-FINE_SCALE_STEP, 0.0, FINE_SCALE_STEP)]


def describe(h: _Hypothesis, shift: tuple[float, float], blur_sigma: float = 0.0, noise: float = 0.0) -> str:
    """Readable candidate -> reference transform and the nuisances modelled."""
    parts = []
    if h.flip:
        parts.append("flip-h")
    if h.turns:
        parts.append(f"rot90×{h.turns}")
    if h.degrees:
        parts.append(f"rotate {h.degrees:+g}°")
    if h.scale != 1.0:
        parts.append(f"zoom {h.scale:g}")
    dy, dx = (round(v, 1) + 0.0 for v in shift)  # + 0.0: no "-0.0"
    parts.append(f"shift ({dy:+.1f},{dx:+.1f}) px")
    parts.append("gamma+shading fitted")
    if blur_sigma:
        parts.append(f"blur {blur_sigma:g} px")
    if noise >= 0.002:
        parts.append(f"noise sd {noise:.3f}")
    return ", ".join(parts)


def _equalise(x: torch.Tensor) -> torch.Tensor:
    """Rank transform (histogram equalisation) of each (B, 1, s, s) image to [0, 1]: the
    same for any monotonic contrast change.  Equal values share their mean rank — a flat
    background must stay flat, not become a ramp in scan order that no flip or turn of
    the other image can match."""
    flat = x.flatten(1)
    ordered = flat.sort(1).values
    lo = torch.searchsorted(ordered, flat, right=False)
    hi = torch.searchsorted(ordered, flat, right=True)
    ranks = (lo + hi - 1).to(x.dtype) / 2 / max(flat.shape[1] - 1, 1)
    return ranks.view_as(x)


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


def _ascend(objective, degrees: torch.Tensor, scales: torch.Tensor, shifts: torch.Tensor, steps: int,
            lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximise ``objective(degrees, scales, shifts) -> (B,)`` by ``steps`` batched Adam
    steps from the given start (zoom in percent of log scale, so all three move alike)."""
    if steps <= 0:
        return degrees, scales, shifts
    with torch.enable_grad():
        deg = degrees.clone().requires_grad_(True)
        log_scale = (100 * torch.log(scales)).clone().requires_grad_(True)
        sh = shifts.clone().requires_grad_(True)
        opt = torch.optim.Adam([deg, log_scale, sh], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            (-objective(deg, torch.exp(log_scale / 100), sh).sum()).backward()
            opt.step()
    return deg.detach(), torch.exp(log_scale.detach() / 100), sh.detach()


def _search(cand_eq: torch.Tensor, ref_eq: torch.Tensor, config: VerificationConfig
            ) -> tuple[list[_Hypothesis], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alignment search on rank-equalised (1, 1, S, S) images at ``config.compare_size``.
    Returns the best ``REFINE_TOP`` hypotheses with refined degrees (H,), scales (H,) and
    shifts (H, 2) in full-resolution pixels, and their shifts before refinement."""
    coarse = _coarse_hypotheses(config)
    scores = _coarse_scores(_resize(cand_eq, COARSE_SIZE), _resize(ref_eq, COARSE_SIZE), coarse)
    fine = _fine_hypotheses(_seeds(coarse, scores))
    size = config.compare_size
    cand_small, ref_small = _resize(cand_eq, size), _resize(ref_eq, size)
    scores, shifts = _stage(cand_small, ref_small, fine, sigma=SMOOTH_SIGMA)
    keep = scores.argsort(descending=True)[:REFINE_TOP].tolist()
    hyps = [fine[i] for i in keep]
    turned = _gaussian_blur(_turned(cand_small, hyps), SMOOTH_SIGMA)
    target = _gaussian_blur(ref_small, SMOOTH_SIGMA).expand_as(turned)

    def ncc(deg, scale, shift):
        warped, valid = _affine(turned, deg, scale, shift)
        return _masked_ncc(warped, target, valid)

    degrees, scales = _angles(hyps)
    grid_shifts = shifts[keep]
    degrees, scales, shifts = _ascend(ncc, degrees, scales, grid_shifts, config.refine_steps, lr=0.15)
    factor = cand_eq.shape[-1] / size
    return hyps, degrees, scales, shifts * factor, grid_shifts * factor


def _refine_full(cand_eq: torch.Tensor, ref_eq: torch.Tensor, hyps: list[_Hypothesis], degrees: torch.Tensor,
                 scales: torch.Tensor, shifts: torch.Tensor, steps: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Continue the refinement at full resolution, in the candidate's frame (where the
    final score is taken): a 0.1 px or 0.2° error that 64 px cannot see costs a copy
    several SSIM points at full resolution."""
    target = _gaussian_blur(cand_eq, FULL_REFINE_SIGMA).expand(len(hyps), -1, -1, -1)
    ref_view = _gaussian_blur(ref_eq, FULL_REFINE_SIGMA)

    def ncc(deg, scale, shift):
        warped, valid = _reference_in_candidate_frame(ref_view, hyps, deg, scale, shift)
        return _masked_ncc(warped, target, valid)

    return _ascend(ncc, degrees, scales, shifts, steps, lr=0.05)


@dataclass(frozen=True)
class _CandidateView:
    """What the final score needs of the candidate alone, computed once per pair:
    the image (1, 1, S, S), its non-saturated pixels, its view after the common
    ``smoothing`` and its estimated noise sd."""

    image: torch.Tensor
    observed: torch.Tensor
    smoothed: torch.Tensor
    noise: float


def _candidate_view(cand: torch.Tensor, config: VerificationConfig) -> _CandidateView:
    observed = cand < SATURATED
    # clipping at 0 or 1 hides noise: estimate it where a pixel's 3×3 neighbourhood is unclipped
    unclipped = observed & (cand > 0.5 / 255)
    noise = noise_sd(cand, -F.max_pool2d(-unclipped.float(), 3, stride=1, padding=1) > 0.5)
    return _CandidateView(cand, observed, _gaussian_blur(cand, config.smoothing), noise)


def _score(view: _CandidateView, ref: torch.Tensor, hyps: list[_Hypothesis], degrees: torch.Tensor,
           scales: torch.Tensor, shifts: torch.Tensor, config: VerificationConfig,
           blur_sigmas: tuple[float, ...] | None = None) -> torch.Tensor:
    """Final scores (H, len(blur_sigmas)) of each hypothesis and blur level (module
    docstring, steps 2–6; ``blur_sigmas`` defaults to the config's)."""
    warped, valid = _reference_in_candidate_frame(ref, hyps, degrees, scales, shifts)
    valid = valid & view.observed
    mapped = photometric_fit(view.image, warped, valid)
    tau = config.smoothing
    cand_view = view.smoothed.expand(len(hyps), -1, -1, -1)
    noise_var = view.noise ** 2 * _noise_gain(tau)
    columns = [masked_ssim(_gaussian_blur(mapped, math.hypot(sigma, tau)), cand_view, valid,
                           config.terms, noise_var)
               for sigma in (config.blur_sigmas if blur_sigmas is None else blur_sigmas)]
    return torch.stack(columns, 1).clamp(-1.0, 1.0)


def _hypotheses(cand: torch.Tensor, ref: torch.Tensor, config: VerificationConfig
                ) -> tuple[list[_Hypothesis], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alignments worth scoring: the search is run on the rank-equalised images as they
    are and after ``SEARCH_DENOISE`` smoothing (equalisation magnifies background noise,
    which can mislead the search; smoothing can erase the fine structure another search
    needs), and both the refined and the unrefined grid alignments of each are kept (a
    strong shading can pull the correlation the refinement climbs away from the truth).
    The final score decides among them.  Shifts in full-resolution pixels."""
    hyps: list[_Hypothesis] = []
    degrees, scales, shifts = [], [], []
    for sigma in (0.0, SEARCH_DENOISE):
        cand_eq, ref_eq = _equalise(_gaussian_blur(cand, sigma)), _equalise(_gaussian_blur(ref, sigma))
        found, deg, sc, sh, grid_sh = _search(cand_eq, ref_eq, config)
        deg, sc, sh = _refine_full(cand_eq, ref_eq, found, deg, sc, sh, config.full_refine_steps)
        grid_deg, grid_sc = _angles(found)
        hyps += found + found
        degrees += [deg, grid_deg]
        scales += [sc, grid_sc]
        shifts += [sh, grid_sh]
    return hyps, torch.cat(degrees), torch.cat(scales), torch.cat(shifts)


def _polish(view: _CandidateView, ref: torch.Tensor, hyp: _Hypothesis, start: torch.Tensor,
            scores: torch.Tensor, config: VerificationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Pattern search on the final score itself around the best alignment: the
    correlation the refinement climbs can peak a few percent of zoom away from where the
    SSIM of the photometrically matched images peaks (seen on CT under a strong shading),
    and the score is what the label rests on.  ``POLISH_ROUNDS`` rounds of the 8 single
    moves of zoom / rotation / shift, steps halved when none improves.

    ``start``: (degrees, zoom, dy, dx) of the alignment, ``scores`` its
    (len(blur_sigmas),) scores.  Returns the polished scores (len(blur_sigmas),) and
    alignment (4,)."""
    steps = torch.tensor([1.5, 0.02, 1.0, 1.0])  # degrees, relative zoom, dy, dx (px)
    current = start
    blur = (config.blur_sigmas[int(scores.argmax())],)  # searched at the blur level found
    best = float(scores.max())
    for _ in range(POLISH_ROUNDS):
        moves = torch.cat([torch.diag(steps), -torch.diag(steps)])
        moves[:, 1] = current[1] * moves[:, 1]
        trial = current + moves
        trial_scores = _score(view, ref, [hyp] * len(trial), trial[:, 0], trial[:, 1], trial[:, 2:], config, blur)
        top = int(trial_scores[:, 0].argmax())
        if float(trial_scores[top, 0]) > best:
            current, best = trial[top], float(trial_scores[top, 0])
        else:
            steps = steps / 2
    if current is start:
        return scores, start
    return _score(view, ref, [hyp], current[:1], current[1:2], current[None, 2:], config)[0], current


def verify_pair(candidate: np.ndarray, reference: np.ndarray,
                config: VerificationConfig = VerificationConfig()) -> Alignment:
    """Best aligned SSIM of ``candidate`` against ``reference``.

    Args:
        candidate, reference: (S, S) float arrays in [0, 1] (model inputs), same shape.
        config: rotation grid, ``compare_size`` (the side at which the alignment is
            searched), refinement steps, SSIM ``terms``, ``smoothing``, ``blur_sigmas``.
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
        cand, ref = _to_tensor(candidate), _to_tensor(reference)
        hyps, degrees, scales, shifts = _hypotheses(cand, ref, config)
        view = _candidate_view(cand, config)
        scores = _score(view, ref, hyps, degrees, scales, shifts, config)
        best = int(scores.amax(1).argmax())
        start = torch.stack([degrees[best], scales[best], shifts[best, 0], shifts[best, 1]])
        scores, found = _polish(view, ref, hyps[best], start, scores[best], config)
    level = int(scores.argmax())
    h = hyps[best]
    h = _Hypothesis(h.flip, h.turns, round(float(found[0]), 1), round(float(found[1]), 3))
    shift = (float(found[2]), float(found[3]))
    blur = float(config.blur_sigmas[level])
    return Alignment(score=float(scores[level]), transform=describe(h, shift, blur, view.noise),
                     dihedral=(h.flip, h.turns), degrees=h.degrees, scale=h.scale, shift=shift,
                     blur_sigma=blur, noise_sd=round(view.noise, 4))


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
