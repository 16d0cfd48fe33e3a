"""Verification re-rank: the best *aligned* SSIM of a candidate against a training image.

The learned DeepSSIM score is a fast estimate; this module checks a candidate against
its few nearest training images with an explicit alignment search and the reference
SSIM terms (:mod:`deepssim.metric.ssim`), and says which transform made them match.

What the score means
--------------------
``Alignment.score`` estimates the reference SSIM the candidate would have with the
training image *if the candidate's nuisances were undone* — the "aligned SSIM" the
labels are defined on.  It is computed in the **candidate's frame** by a forward model
of the training image:

1. **alignment search** (:func:`_search`), on rank-equalised images (any monotonic
   contrast change is irrelevant) in local contrast (:func:`_local_contrast`: local
   structure, as SSIM's structure term sees it, so a large flat region or a replaced patch
   cannot outvote the anatomy), for all of a candidate's references at once:

   - a coarse grid (8 flips/quarter-turns × ``rotation_degrees`` × ``COARSE_SCALES``) ranked
     by FFT cross-correlation at ``COARSE_SIZE`` px — the candidate's rotated views are
     made once and shared by every reference;
   - every symmetry's best grid point refined by Gauss–Newton (:func:`_gauss_newton`:
     rotation, zoom and shift with the warp's Jacobian in closed form) at ``COARSE_SIZE``, the best
     ``SEEDS_PER_REFERENCE`` again at ``compare_size``;
   - references whose alignment is far below the best reference's are set aside
     (``COARSE_MARGIN`` / ``REFERENCE_MARGIN``, at most ``COARSE_REFERENCES`` /
     ``FULL_REFERENCES`` go on): a crowd of look-alike slices costs like a few.  Their
     :class:`Alignment` is ``verified=False`` with a NaN score;
   - the rest refined at full resolution (``full_refine_steps``, none by default: step 7
     is);
2. the training image is **warped into the candidate's frame** with the transform found
   (the same bilinear resampling that made a geometric copy, so interpolation blur is
   reproduced rather than compared against);
3. **photometry**: ``log c ≈ a + γ·log r + quadratic(x, y)`` is fitted by robustly
   reweighted least squares (a gamma / window change followed by a smooth coil shading;
   a structural edit's pixels are down-weighted), and the training image is mapped
   through it; the training image's own photometry is scored too, and the better kept;
4. **blur**: the mapped image is blurred by each of ``blur_sigmas`` (the copy may be
   smoother than its source) and, when the candidate is band-limited like an image
   up-sampled from a coarser grid (a generator working at its own, lower resolution:
   :func:`_band_limited_factors`), resampled through each such grid (``grid_factors``:
   down to 1/f of its side, area-averaged, and back up bilinearly — what a generator's
   memorized sample is); the best is kept — after the blur levels are extrapolated to no
   shared blur (:func:`_without_common_blur`: the score's slope in the blur both images
   share, measured once per row, times each level's blur variance, is subtracted; a copy's
   score does not move, a near-copy's gain from the blur it shares with the training image
   goes);
5. **noise**: the candidate's white-noise variance is estimated (robust MAD of a
   Laplacian-difference filter) and subtracted from its local variances inside the SSIM
   formula, so additive noise does not count as a structural difference;
6. SSIM (``terms``: the full reference formula by default) at full resolution (after a
   common smoothing of ``smoothing`` px, none by default), averaged over the windows both
   images show (pixels outside the warped field of view and saturated candidate pixels —
   whose structure a window/level change destroyed — are left out; :func:`masked_ssim`);
7. the best references' alignment is **refined once more on the photometrically matched
   images** (:func:`_photometric_refine`: the candidate brought into the reference's
   photometry, the reference blurred to the level found) and re-scored.

It is the maximum over the hypotheses kept, the two photometries and the softenings,
clipped to [-1, 1]: the SSIM of the best explanation "the candidate is this training
image seen through a nuisance transform".  A structural edit (deformation, blend,
replaced patch) is none of these nuisances and keeps lowering the score, which is what
separates *similar* from *duplicate*.  How closely it tracks the aligned SSIM per kind of
candidate, and what it costs, is measured by ``benchmarks/verify_fidelity.py``
(BENCHMARKS.md, "Verification").

:func:`verify_candidate` verifies one candidate against its k references in one batched
computation; :func:`verify_pair` is the same with k = 1 (a reference set aside in a batch
is one whose pair score would not have been the best).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from deepssim.config import VerificationConfig

COARSE_SIZE = 32  # px, the coarse grid (24 cost the case study 0.02-0.03 in macro F1)
COARSE_SCALES = (0.9, 1.0, 1.1)
EMBEDDING_FIRST = 2  # the first references (the embedding's nearest) are always refined past the coarse grid
COARSE_REFERENCES = 6  # other references refined past the coarse grid, at most
COARSE_MARGIN = 0.15  # ... and only those whose coarse score is this close to the best's
COARSE_CHUNK = 3  # references correlated at a time on the coarse grid
SEEDS_PER_REFERENCE = 3  # symmetries per reference refined at compare_size
ROWS_PER_REFERENCE = 1  # of those, refined again at full resolution and scored
FULL_REFERENCES = 3  # references taken past the search resolution, at most
REFERENCE_MARGIN = 0.1  # ... and only those whose search score is this close to the best's
PHOTOMETRIC_MARGIN = 0.05  # references scoring this close to the best get the photometric refinement
LOCAL_CONTRAST_SIGMA = 3.0  # px at side 64: the window of the search images' local contrast
SMOOTH_SIGMA = 0.7  # smoothing (px at compare_size) of the images the search compares
MAX_SHIFT_FRACTION = 0.25
FULL_REFINE_SIGMA = 1.0  # smoothing (full-resolution px) of the full-resolution refinement
MAX_STEP = torch.tensor([2.0, 0.03, 1.5, 1.5])  # one refinement step: degrees, log zoom, dy, dx (px)
SATURATED = 1 - 0.5 / 255  # candidate pixels at or above this lost their structure to clipping
SSIM_CHUNK = 6  # images per batched SSIM computation
PHOTOMETRIC_CHUNK = 3  # references per batched photometric fit
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
    verified: bool = True
    grid_factor: float = 1.0


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


_KERNELS: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def _gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Normalised 1D Gaussian of ``sigma`` px (radius 3 sigma), made once per sigma, dtype
    and device (a verification blurs with a handful of sigmas hundreds of times)."""
    device = torch.empty(0, device=device).device
    key = (float(sigma), dtype, device)
    if key not in _KERNELS:
        radius = max(1, int(math.ceil(3 * sigma)))
        t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        _KERNELS[key] = k / k.sum()
    return _KERNELS[key]


_WEIGHTS: dict[tuple[float, torch.dtype], list[float]] = {}


def _kernel_weights(sigma: float, dtype: torch.dtype) -> list[float]:
    """:func:`_gaussian_kernel`'s values as Python numbers (read once: on a GPU every read of
    a tensor's values waits for the device)."""
    key = (float(sigma), dtype)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = _gaussian_kernel(sigma, dtype, torch.device("cpu")).tolist()
    return _WEIGHTS[key]


SHIFTED_SUM_RADIUS = 5  # blur kernels up to this radius are sums of shifted slices, wider ones convolutions


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding.  A narrow kernel is a
    weighted sum of shifted views (1.3-2.9× faster on the CPU than a one-channel convolution,
    which torch runs poorly); a wide one a convolution."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, x.dtype, x.device)
    radius = len(k) // 2
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    if radius > SHIFTED_SUM_RADIUS:
        return F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    h, w = x.shape[-2] - 2 * radius, x.shape[-1] - 2 * radius
    weights = _kernel_weights(sigma, x.dtype)
    rows = sum(weight * x[..., :, i:i + w] for i, weight in enumerate(weights))
    return sum(weight * rows[..., i:i + h, :] for i, weight in enumerate(weights))


def _grid_resample(x: torch.Tensor, factor: float) -> torch.Tensor:
    """(B, 1, S, S) through a grid of side S / ``factor``: down (area-averaged), back up bilinearly."""
    size = x.shape[-1]
    side = max(4, int(round(size / factor)))
    down = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(down, size=(size, size), mode="bilinear", align_corners=False)


def _grid_residual(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Energy a grid of 1/``factor`` resolution loses, relative to each image's variance (B,)."""
    lost = (x - _grid_resample(x, factor)).pow(2).flatten(1).mean(1)
    return lost / x.flatten(1).var(1).clamp_min(1e-12)


def _band_limited_factors(cand: torch.Tensor, refs: torch.Tensor, config: VerificationConfig) -> tuple[float, ...]:
    """The ``grid_factors`` through which the candidate (1, 1, S, S) passes almost unchanged
    compared with its references (k, 1, S, S): it keeps at most ``band_limit_ratio`` of the
    detail such a grid removes from the median reference.  A candidate made at full
    resolution (any planted copy, edit or other subject scanned like the cohort) keeps more
    and is never compared through a coarser grid; one up-sampled from a generator's grid
    keeps little.  Measured, not told: the gate never knows the generator's resolution."""
    factors = []
    for factor in config.grid_factors:
        ratio = _grid_residual(cand, factor)[0] / _grid_residual(refs, factor).median().clamp_min(1e-12)
        if float(ratio) <= config.band_limit_ratio:
            factors.append(float(factor))
    return tuple(factors)


def _soften(x: torch.Tensor, softening: tuple[str, float], tau: float) -> torch.Tensor:
    """A training image made as smooth as its copy may be: ``("blur", sigma)`` or
    ``("grid", factor)``, then the common smoothing ``tau``."""
    kind, value = softening
    if kind == "grid":
        return _gaussian_blur(_grid_resample(x, value), tau)
    return _gaussian_blur(x, math.hypot(value, tau))


def _noise_gain(sigma: float) -> float:
    """Factor by which a Gaussian blur of ``sigma`` px scales the variance of white noise."""
    return float((_gaussian_kernel(sigma, torch.float64) ** 2).sum()) ** 2 if sigma > 0 else 1.0


def _dihedral(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    """Flip (left-right) then turn by ``turns`` × 90° counter-clockwise; (B, 1, S, S)."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


_BASE_GRIDS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _base_grid(size: int, device: torch.device | None = None) -> torch.Tensor:
    """(size*size, 3) homogeneous pixel-centre coordinates in [-1, 1] (align_corners=False),
    on ``device`` (default: torch's current default device)."""
    device = torch.empty(0, device=device).device
    if (size, device) not in _BASE_GRIDS:
        lin = (torch.arange(size, dtype=torch.float32, device=device) * 2 + 1) / size - 1
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        _BASE_GRIDS[size, device] = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(-1, 3)
    return _BASE_GRIDS[size, device]


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


def _sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """The sampling points of (B, 2, 3) ``theta`` on a side-``size`` output grid, as two planes
    (B, 2, size, size) of x and y in [-1, 1] (align_corners=False): ``F.affine_grid``'s numbers
    (to float rounding), made as outer sums — grid and resampling together ran 2× slower with
    a matrix product of inner dimension 3 on batches of up to 64 (20 % faster on the coarse
    grid's 168 views, 0.3 ms a candidate).  ``.permute(0, 2, 3, 1)`` gives ``grid_sample``'s
    (B, size, size, 2)."""
    lin = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1
    t = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1): per output coordinate, its x, y and constant terms
    return t[:, :, 0] * lin.view(1, 1, 1, size) + (t[:, :, 1] * lin.view(1, 1, size, 1) + t[:, :, 2])


def _in_chunks(fn, n: int, chunk: int, *args):
    """``fn(*args)`` over ``chunk`` rows at a time of every tensor argument with ``n`` rows
    (the others, e.g. one shared candidate, go whole to every call), concatenated — each
    output tensor, or each element of a tuple of them.  A few images at a time stay in the
    CPU's cache: batches of row-independent work ran 2-4× faster so than all at once."""
    def rows(x, i):
        return x[i:i + chunk] if isinstance(x, torch.Tensor) and x.dim() and len(x) == n else x

    parts = [fn(*(rows(x, i) for x in args)) for i in range(0, n, chunk)]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return tuple(torch.cat(p) for p in zip(*parts))


def _inside(planes: torch.Tensor, size: int) -> torch.Tensor:
    """Which sampling points (B, 2, ...) (:func:`_sampling_grid`) of a side-``size`` image fall
    wholly inside it (B, ...)."""
    edge = 1 - 1 / size + 1e-6
    g = planes.abs()
    return (g[:, 0] <= edge) & (g[:, 1] <= edge)


def _sample(x: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resampling of (B or 1, 1, S, S) through (B, 2, 3) ``theta`` (zero padding);
    returns the images and a (B, 1, S, S) bool mask of pixels sampled inside the input."""
    n, size = theta.shape[0], x.shape[-1]
    planes = _sampling_grid(theta, size)
    warped = F.grid_sample(x.expand(n, -1, -1, -1), planes.permute(0, 2, 3, 1), mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    valid = _inside(planes, size).unsqueeze(1)
    return warped, valid


def _affine(x: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor,
            shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``degrees`` (B,), zoom by ``scale`` (B,) about the centre and translate by
    ``shift`` (B, 2) pixels (dy, dx); bilinear, zero padding.  x: (B, 1, S, S).
    Returns the warped images and a (B, 1, S, S) bool mask of the pixels that sample
    wholly inside the input's field of view."""
    if shift is None:
        shift = torch.zeros(x.shape[0], 2, device=x.device)
    return _sample(x, _theta(degrees, scale, shift, x.shape[-1]))


_DIHEDRAL_MATRICES: dict[tuple[bool, int], torch.Tensor] = {}


def _dihedral_matrix(flip: bool, turns: int) -> torch.Tensor:
    """(2, 2) matrix A with ``_dihedral(x)(u) = x(A u)`` in normalised pixel-centre
    coordinates (a signed permutation, exact on the pixel grid), read off the function
    itself so the two can never disagree."""
    if (flip, turns) not in _DIHEDRAL_MATRICES:
        coords = _base_grid(4, torch.device("cpu"))[:, :2].T.reshape(1, 2, 4, 4)
        moved = _dihedral(coords, flip, turns).reshape(2, -1)
        _DIHEDRAL_MATRICES[flip, turns] = torch.linalg.lstsq(coords.reshape(2, -1).T, moved.T).solution.T.round()
    return _DIHEDRAL_MATRICES[flip, turns]


_UNDO_DIHEDRAL: dict[torch.device, torch.Tensor] = {}


def _undo_dihedral(dihedral: torch.Tensor) -> torch.Tensor:
    """(H, 2, 2) inverses of the matrices of the symmetries ``dihedral`` (H,) (indices into
    ``DIHEDRAL``)."""
    device = dihedral.device
    if device not in _UNDO_DIHEDRAL:
        inverses = [torch.linalg.inv(_dihedral_matrix(flip, turns)) for flip, turns in DIHEDRAL]
        _UNDO_DIHEDRAL[device] = torch.stack(inverses).to(device)
    return _UNDO_DIHEDRAL[device][dihedral]


def _reference_in_candidate_frame(reference: torch.Tensor, dihedral: torch.Tensor, degrees: torch.Tensor,
                                  scales: torch.Tensor, shifts: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of each hypothesis' candidate -> reference mapping (symmetry index into
    ``DIHEDRAL`` (H,), then rotation, zoom and shift) applied to the reference (1 or H, 1,
    S, S): (H, 1, S, S) images in the candidate's frame and their masks of pixels the
    reference covers, in one resampling (the flip/turn is folded into the affine map).
    ``shifts`` (H, 2) in full-resolution pixels."""
    theta = _theta(degrees, scales, shifts, reference.shape[-1])
    inverse = torch.linalg.inv(theta[:, :, :2])
    return _sample(reference, torch.cat([inverse @ _undo_dihedral(dihedral), -inverse @ theta[:, :, 2:]], 2))


def _quadratic_basis(size: int) -> torch.Tensor:
    """(size*size, 6) monomials 1, x, y, x², y², xy on a [-1, 1] pixel-centre grid."""
    grid = _base_grid(size)  # the pixel centres the warps sample at
    xx, yy = grid[:, 0], grid[:, 1]
    return torch.stack([torch.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy]).T


_BASIS_PRODUCTS: dict[tuple[int, torch.device], torch.Tensor] = {}
ROBUST_ROUNDS = 3  # reweighted refits of the intensity map
MEDIAN_STRIDE = 7  # the residuals' scale is the median of every 7th pixel's (a sort of 16k costs)


def _masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Median of each row of (B, N) ``x`` over its ``mask``ed entries, (B, 1) (0 where
    the mask is empty)."""
    ordered = torch.where(mask, x, torch.full_like(x, float("inf"))).sort(1).values
    count = mask.sum(1, keepdim=True)
    middle = ((count - 1).clamp_min(0) // 2)
    return torch.where(count > 0, ordered.gather(1, middle), torch.zeros_like(middle, dtype=x.dtype))


def _weighted_least_squares(x: torch.Tensor, basis: torch.Tensor, y: torch.Tensor, weight: torch.Tensor
                            ) -> torch.Tensor:
    """Per row b, the coefficients (B, 1 + P) minimising ``sum w·(y - c0·x - basis @ c)²``
    for x, y, w (B, N) and a shared basis (N, P), from the normal equations: their
    basis × basis block is one (B, N) @ (N, P²) product instead of a (B, N, 1 + P) design.
    Sums in float64: in float32 the solution moved in the 6th decimal with the batch."""
    key = (basis.shape[0], basis.device)
    if key not in _BASIS_PRODUCTS:
        _BASIS_PRODUCTS[key] = (basis[:, :, None] * basis[:, None, :]).flatten(1).double()
    p = basis.shape[1]
    w, x, y, basis = weight.double(), x.double(), y.double(), basis.double()
    wx = w * x
    system = torch.empty(w.shape[0], p + 1, p + 1, dtype=torch.float64, device=w.device)
    system[:, 0, 0] = (wx * x).sum(1)
    system[:, 0, 1:] = system[:, 1:, 0] = wx @ basis
    system[:, 1:, 1:] = (w @ _BASIS_PRODUCTS[key]).view(-1, p, p)
    rhs = torch.cat([(wx * y).sum(1, keepdim=True), (w * y) @ basis], 1)
    system = system + 1e-9 * torch.eye(p + 1, dtype=torch.float64, device=w.device)
    return torch.linalg.solve(system, rhs.unsqueeze(2))[..., 0].float()


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
    return _map_photometry(reference, *_photometric_coefficients(candidate, reference, valid, floor))


def _map_photometry(reference: torch.Tensor, gamma: torch.Tensor, field: torch.Tensor, enough: torch.Tensor
                    ) -> torch.Tensor:
    """(B, 1, S, S) references through the fit of :func:`_photometric_coefficients`."""
    r = reference.flatten(1)
    mapped = torch.exp(gamma * torch.log(r.clamp_min(1e-6)) + field).clamp(0, 1).view_as(reference)
    return torch.where(enough.view(-1, 1, 1, 1), mapped, reference)


def _photometric_coefficients(candidate: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor,
                              floor: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fit of :func:`photometric_fit`: gamma (B, 1), log shading field including the
    offset (B, S²), and whether enough pixels were usable (B,)."""
    n, size = reference.shape[0], reference.shape[-1]
    if n > PHOTOMETRIC_CHUNK:  # ~1.8× faster than all at once
        return _in_chunks(_photometric_coefficients, n, PHOTOMETRIC_CHUNK, candidate, reference, valid, floor)
    basis = _quadratic_basis(size)
    c = candidate.expand(n, -1, -1, -1).flatten(1)
    r = reference.flatten(1)
    use = valid.flatten(1) & (c > floor) & (r > floor) & (c < SATURATED)
    log_r, log_c = torch.log(r.clamp_min(1e-4)), torch.log(c.clamp_min(1e-4))
    weight = (r * use) ** 2
    coef = _weighted_least_squares(log_r, basis, log_c, weight)
    for round_ in range(ROBUST_ROUNDS):
        # robust reweighting, Cauchy then Tukey's biweight (which rejects outright): a
        # structural edit (replaced patches, a blended-in image) must not pull the
        # intensity map fitted to the rest of the image
        residual = (log_c - coef[:, :1] * log_r - coef[:, 1:] @ basis.T) * use
        scale = _masked_median(residual.abs()[:, ::MEDIAN_STRIDE], use[:, ::MEDIAN_STRIDE]).clamp_min(1e-3) * 1.4826
        u = residual / scale
        robust = 1 / (1 + (u / 2.385) ** 2) if round_ < ROBUST_ROUNDS // 2 else (1 - (u / 4.685) ** 2).clamp_min(0) ** 2
        coef = _weighted_least_squares(log_r, basis, log_c, weight * robust)
    gamma = coef[:, :1].clamp(0.3, 3.0)
    field = (coef[:, 1:] @ basis.T).clamp(-MAX_LOG_FIELD, MAX_LOG_FIELD)
    return gamma, field, use.sum(1) >= 8 * basis.shape[1]


def noise_sd(image: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Standard deviation of additive white noise in a (1, 1, S, S) image: the median
    absolute response of the Laplacian-difference filter [[1,-2,1],[-2,4,-2],[1,-2,1]]
    (Immerkær 1996), which cancels smooth anatomy, divided by its noise gain 6 × 0.6745.
    ``valid`` (1, 1, S, S) bool restricts it to a region."""
    kernel = torch.tensor([[1., -2., 1.], [-2., 4., -2.], [1., -2., 1.]], dtype=image.dtype, device=image.device)
    response = F.conv2d(image, kernel.view(1, 1, 3, 3))[0, 0].abs()
    if valid is not None:
        inner = valid[0, 0, 1:-1, 1:-1]
        response = response[inner] if int(inner.sum()) >= 16 else response.flatten()
    return float(response.median()) / (6 * 0.6745)


def _box_filter(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """'Valid' running mean of ``width`` samples along ``dim`` (a sum over an unfolded view:
    6× faster on CPU than cumulative sums, and no cancellation)."""
    return x.unfold(dim, width, 1).sum(-1) / width


def masked_ssim(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None,
                terms: str = "ssim", noise_var_b: torch.Tensor | float | None = None) -> torch.Tensor:
    """The reference SSIM restricted to a region.

    Each image is z-scored over its ``valid`` pixels, the SSIM map is computed with the
    reference constants (7×7 uniform window, sample covariance, data range of ``a``) and
    averaged over the windows lying wholly inside ``valid``.  With ``valid`` all true and
    no ``noise_var_b`` this equals :func:`deepssim.metric.ssim.ssim_torch` (and scikit-image)
    exactly.  ``noise_var_b`` (intensity units², scalar or (B,)): the variance of white
    noise known to be in ``b``, subtracted from its local variances (independent noise
    adds to a variance, not to a covariance), so the score is that of the noise-free image.

    Args:
        a, b: (B, 1, s, s) float tensors; ``valid``: (B, 1, s, s) bool or None (all valid).
    Returns:
        (B,) SSIM in [-1, 1] (dtype of ``a``).
    """
    from deepssim.metric.ssim import K1, K2, WINDOW

    if valid is None:
        valid = torch.ones_like(a, dtype=torch.bool)
    if len(a) > SSIM_CHUNK:  # ~3× faster than 48 images at once
        return _in_chunks(masked_ssim, len(a), SSIM_CHUNK, a, b, valid, terms, noise_var_b)
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
        noise = torch.as_tensor(noise_var_b, dtype=a.dtype, device=a.device).reshape(-1, 1, 1, 1)
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


# --------------------------------------------------------------------------- hypotheses

@dataclass(frozen=True)
class _Rows:
    """Alignment hypotheses of one candidate against several references, one per row.

    ``ref`` (R,) index into the references, ``dihedral`` (R,) index into ``DIHEDRAL``,
    ``degrees`` (R,), ``scales`` (R,) and
    ``shifts`` (R, 2) pixels (dy, dx) at the side the rows were last refined at: the
    mapping from the reference frame to the flipped/turned candidate (:func:`_theta`)."""

    ref: torch.Tensor
    dihedral: torch.Tensor
    degrees: torch.Tensor
    scales: torch.Tensor
    shifts: torch.Tensor

    def take(self, index: torch.Tensor) -> "_Rows":
        return _Rows(*(getattr(self, f.name)[index] for f in fields(self)))

    def with_geometry(self, degrees: torch.Tensor, scales: torch.Tensor, shifts: torch.Tensor) -> "_Rows":
        return _Rows(self.ref, self.dihedral, degrees, scales, shifts)

    def rescaled(self, factor: float) -> "_Rows":
        return self.with_geometry(self.degrees, self.scales, self.shifts * factor)

    @staticmethod
    def cat(parts: list["_Rows"]) -> "_Rows":
        return _Rows(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(_Rows)))

    def hypothesis(self, i: int) -> _Hypothesis:
        flip, turns = DIHEDRAL[int(self.dihedral[i])]
        return _Hypothesis(flip, turns, float(self.degrees[i]), float(self.scales[i]))

    def __len__(self) -> int:
        return int(self.ref.shape[0])


def _dihedral_views(x: torch.Tensor) -> torch.Tensor:
    """(1, 1, s, s) -> (8, 1, s, s): the image under each symmetry of ``DIHEDRAL``."""
    return torch.cat([_dihedral(x, f, k) for f, k in DIHEDRAL])


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-norm (..., s, s) images."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return x / x.flatten(-2).norm(dim=-1).clamp_min(1e-9)[..., None, None]


# --------------------------------------------------------------------------- search stages

@dataclass(frozen=True)
class _SearchImages:
    """Rank-equalised search images of one candidate and its k references, at full
    resolution (1, 1, S, S) / (k, 1, S, S) and at each side of ``pyramid`` in local contrast
    (:func:`_search_view`): the candidate under each symmetry (8, 1, s, s) and the
    references (k, 1, s, s).  A finer level is made by :meth:`with_level` for the references
    still searched only (zeros elsewhere): most of a crowd is set aside at the coarse grid."""

    cand: torch.Tensor
    refs: torch.Tensor
    pyramid: dict[int, tuple[torch.Tensor, torch.Tensor]]

    def with_level(self, side: int, needed: torch.Tensor) -> "_SearchImages":
        """These images plus the level ``side`` made for the references ``needed`` (indices)."""
        refs = torch.zeros(len(self.refs), 1, side, side, dtype=self.refs.dtype, device=self.refs.device)
        refs[needed] = _search_view(self.refs[needed], side)
        views = _dihedral_views(_search_view(self.cand, side))
        return _SearchImages(self.cand, self.refs, {**self.pyramid, side: (views, refs)})


def _local_contrast(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, s, s) images with their local mean removed and divided by their local
    standard deviation (Gaussian windows of ``sigma`` px; a floor of a tenth of the image's
    standard deviation keeps flat regions flat): local structure, as SSIM's structure
    term sees it, whatever the local brightness and contrast."""
    mean = _gaussian_blur(x, sigma)
    var = (_gaussian_blur(x * x, sigma) - mean * mean).clamp_min(0)
    floor = (0.1 * x.flatten(1).std(1)).view(-1, 1, 1, 1) ** 2
    return (x - mean) / (var + floor).sqrt()


def _search_view(x: torch.Tensor, side: int) -> torch.Tensor:
    """Search image at ``side`` of rank-equalised (B, 1, S, S): smoothed, then in local
    contrast (:func:`_local_contrast`)."""
    return _local_contrast(_gaussian_blur(_resize(x, side), SMOOTH_SIGMA), LOCAL_CONTRAST_SIGMA * side / 64)


def _search_images(cand: torch.Tensor, refs: torch.Tensor, side: int) -> _SearchImages:
    """Search images with the level ``side`` made for every reference."""
    cand, refs = _equalise(cand), _equalise(refs)
    return _SearchImages(cand, refs, {}).with_level(side, torch.arange(len(refs)))


def _coarse_grid(config: VerificationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotations (G,) and zooms (G,) of the coarse grid (one grid per symmetry)."""
    grid = [(float(d), s) for d in config.rotation_degrees for s in COARSE_SCALES]
    return torch.tensor([d for d, _ in grid]), torch.tensor([s for _, s in grid])


def _coarse_seeds(images: _SearchImages, config: VerificationConfig) -> tuple[_Rows, torch.Tensor]:
    """Rank every symmetry × rotation × zoom of the grid for every reference by the peak
    normalised cross-correlation over shifts (FFT, at ``COARSE_SIZE``; the candidate's
    rotated views are made once and shared by all references), and keep for each
    reference and each of the 8 symmetries its best grid point.  A near-symmetric anatomy (a brain's two hemispheres, a
    blurry EPI slice) makes a wrong symmetry score as well as the right one at this
    resolution: every symmetry goes on to the refinement, which decides.
    Returns the seed rows (8 per reference, shifts in pixels at ``COARSE_SIZE``) and
    their coarse scores (8k,)."""
    degrees, scales = _coarse_grid(config)
    g = len(degrees)
    k = images.refs.shape[0]
    size = COARSE_SIZE
    views, refs = images.pyramid[size]
    rotated, _ = _affine(views.repeat_interleave(g, 0), degrees.repeat(8), scales.repeat(8))
    cand_f = torch.fft.rfft2(_unit(rotated)).view(1, 8 * g, size, size // 2 + 1)
    ref_f = torch.fft.rfft2(_unit(refs)).view(k, 1, size, -1)
    near = torch.nonzero((torch.fft.fftfreq(size) * size).abs() <= MAX_SHIFT_FRACTION * size).flatten()
    scores, peak = _in_chunks(lambda f: _correlation_peaks(f, cand_f, near), k, COARSE_CHUNK, ref_f)
    scores, peak = scores.view(k, 8, g), peak.view(k, 8, g)
    best, point = scores.max(-1)                               # (k, 8)
    ref = torch.arange(k).repeat_interleave(8)
    dihedral = torch.arange(8).repeat(k)
    point = point.flatten()
    at = peak[ref, dihedral, point]
    offsets = (torch.fft.fftfreq(size) * size)[near]  # the peak's signed shift, in the convention of _theta
    shifts = torch.stack([offsets[at // len(near)], offsets[at % len(near)]], 1)
    return _Rows(ref, dihedral, degrees[point], scales[point], shifts), best.flatten()


def _correlation_peaks(ref_f: torch.Tensor, cand_f: torch.Tensor, near: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak circular cross-correlation (and its index among the allowed shifts) of each
    reference spectrum (c, 1, s, s//2+1) with each candidate view's (1, V, s, s//2+1), over
    the shifts ``near`` (m,) allows in each axis: (c, V) each.  Called on a few references at
    a time (``COARSE_CHUNK``, :func:`_in_chunks`): 3-4× faster than all at once.  The inverse
    transform is taken one axis at a time, the second only for the rows of allowed shifts
    (the same numbers as a 2D inverse, 20 % faster)."""
    size = cand_f.shape[-2]
    rows = torch.fft.ifft(ref_f * cand_f.conj(), dim=-2).index_select(-2, near)
    corr = torch.fft.irfft(rows, n=size, dim=-1)
    return corr.index_select(-1, near).flatten(-2).max(-1)


def _image_gradients(x: torch.Tensor) -> torch.Tensor:
    """(R, 1, s, s) -> (R, 2, s, s): d/dx and d/dy in pixels (central differences)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return torch.cat([gx, gy], 1)


def _gauss_newton(moving: torch.Tensor, target: torch.Tensor, rows: _Rows, iterations: int
                  ) -> tuple[_Rows, torch.Tensor]:
    """Refine the rotation, zoom and shift of each row so that ``moving`` (R, 1, s, s)
    sampled through them (:func:`_affine`) matches ``target`` (R, 1, s, s) up to a gain and
    an offset: Levenberg–Marquardt on the least squares over the pixels sampled inside,
    with the warp's Jacobian in closed form.  It converges in a few iterations from a grid
    point (where a gradient ascent needed tens of steps).  A step is at most ``MAX_STEP``
    (the linearisation holds only near the start) and is taken only where it raises the
    row's normalised cross-correlation — not merely lowers the residual, which a warp
    that slides onto a flat region also does; otherwise that row's damping is raised.
    Returns the rows (shifts in pixels at side s) and their NCC at the end (R,)."""
    size = moving.shape[-1]
    stack = torch.cat([moving, _image_gradients(moving) * (size / 2)], 1)  # d/d(normalised coordinate)
    target = target.flatten(1)
    params = torch.stack([rows.degrees, torch.log(rows.scales), rows.shifts[:, 0], rows.shifts[:, 1]], 1)
    system, rhs, ncc = _linearised(stack, target, params)
    damping = torch.full((len(rows), 1, 1), 1e-3, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.float64)
    for _ in range(max(0, iterations)):
        lhs = system + damping * torch.diag_embed(system.diagonal(dim1=1, dim2=2)) + 1e-9 * eye
        step = torch.nan_to_num(torch.linalg.solve(lhs, rhs.unsqueeze(2))[:, :4, 0].float())
        limit = MAX_STEP.to(step.device)
        trial = params + torch.maximum(torch.minimum(step, limit), -limit)
        trial_system, trial_rhs, trial_ncc = _linearised(stack, target, trial)
        better = trial_ncc > ncc
        params = torch.where(better[:, None], trial, params)
        system = torch.where(better[:, None, None], trial_system, system)
        rhs = torch.where(better[:, None], trial_rhs, rhs)
        ncc = torch.where(better, trial_ncc, ncc)
        damping = torch.where(better[:, None, None], damping / 3, damping * 10)
    return rows.with_geometry(params[:, 0], torch.exp(params[:, 1]), params[:, 2:]), ncc


def _linearised(stack: torch.Tensor, target: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At ``params`` (R, 4) = (degrees, log zoom, dy, dx): the normal equations (R, 6, 6)
    and right-hand side (R, 6), in float64, of the residual left by a least-squares gain
    and offset, in (degrees, log zoom, dy, dx, gain, offset), and the normalised
    cross-correlation over the valid pixels (R,).  ``stack``: (R, 3, s, s) the moving image and its gradients in
    normalised coordinates; ``target``: (R, s²)."""
    size = stack.shape[-1]
    degrees, log_scale = params[:, 0], params[:, 1]
    theta = _theta(degrees, torch.exp(log_scale), params[:, 2:], size)
    planes = _sampling_grid(theta, size)                                   # (R, 2, s, s)
    sampled = F.grid_sample(stack, planes.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                            align_corners=False).flatten(2)               # (R, 3, N)
    valid = _inside(planes, size).flatten(1).to(sampled.dtype)  # (R, N)
    warped = sampled[:, 0]
    count = valid.sum(1).clamp_min(1.0)
    mw, mt = (warped * valid).sum(1) / count, (target * valid).sum(1) / count
    dw, dt = (warped - mw[:, None]) * valid, (target - mt[:, None]) * valid
    sww, stt, swt = (dw * dw).sum(1), (dt * dt).sum(1), (dw * dt).sum(1)
    gain = swt / sww.clamp_min(1e-12)
    res = dt - gain[:, None] * dw
    ncc = swt / (sww * stt).sqrt().clamp_min(1e-12)
    gx, gy = planes[:, 0].flatten(1), planes[:, 1].flatten(1)
    ix, iy = sampled[:, 1] * valid, sampled[:, 2] * valid  # every warp column is linear in them
    zoom = torch.exp(log_scale)[:, None]
    g = gain[:, None]
    cos, sin = torch.cos(degrees * math.pi / 180)[:, None] / zoom, torch.sin(degrees * math.pi / 180)[:, None] / zoom
    k = 2.0 / size
    # chain rule through _theta's mapping: d(grid)/d(parameter) in closed form, times the gain
    design = torch.stack([(gx * iy - gy * ix) * (g * math.pi / 180),     # degrees
                          (gx * ix + gy * iy) * -g,                         # log zoom
                          ix * (g * sin * k) - iy * (g * cos * k),          # dy
                          ix * (-g * cos * k) - iy * (g * sin * k),         # dx
                          warped * valid, valid], 1)                        # gain, offset: (R, 6, N)
    system = (design @ design.transpose(1, 2)).double()
    return system, (design @ res.unsqueeze(2))[..., 0].double(), ncc


def _warp_rows(views: torch.Tensor, targets: torch.Tensor, rows: _Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the candidate view ``views[dihedral]`` (8, 1, s, s) and the reference
    ``targets[ref]`` (k, 1, s, s): (R, 1, s, s) each."""
    return views[rows.dihedral], targets[rows.ref]


def _refine(images: _SearchImages, rows: _Rows, side: int, from_side: int, iterations: int
            ) -> tuple[_Rows, torch.Tensor]:
    """Gauss–Newton refinement of the rows (shifts in pixels at ``from_side``) on the
    search images at ``side``; returns the rows (shifts at ``side``) and their NCC there
    over the pixels the warp covers (R,)."""
    views, targets = images.pyramid[side]
    rows = rows.rescaled(side / from_side)
    return _gauss_newton(*_warp_rows(views, targets, rows), rows, iterations)


def _select(rows: _Rows, scores: torch.Tensor, per_reference: int, references: int, margin: float,
            k: int | None = None, always: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the rows worth refining further: the best ``per_reference`` rows of each
    of the references whose best score is within ``margin`` of the best reference's (at
    most ``references`` of them), and of the first ``always`` references whatever their
    score.  Also returns each reference's best score (k,), NaN for references without rows
    (``k``: the number of references, default the largest index present + 1)."""
    k = k if k is not None else (int(rows.ref.max()) + 1 if len(rows) else 0)
    best = torch.full((k,), float("-inf"), dtype=scores.dtype).scatter_reduce(0, rows.ref, scores, "amax")
    best[torch.bincount(rows.ref, minlength=k) == 0] = float("nan")
    order = torch.nan_to_num(best, nan=-2.0).argsort(descending=True)
    values = best.tolist()
    top = values[int(order[0])] if k else 0.0
    keep_refs = [j for j in order[:references].tolist() if values[j] >= top - margin]
    keep_refs += [j for j in range(min(always, k)) if j not in keep_refs and not math.isnan(values[j])]
    keep = []
    for j in keep_refs:
        mine = torch.nonzero(rows.ref == j).flatten()
        keep.append(mine[scores[mine].argsort(descending=True)[:per_reference]])
    return (torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)), best


def describe(h: _Hypothesis, shift: tuple[float, float], blur_sigma: float = 0.0, noise: float = 0.0,
             grid_factor: float = 1.0) -> str:
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
    if grid_factor != 1.0:
        parts.append(f"resampled through a 1/{grid_factor:g} grid")
    if noise >= 0.002:
        parts.append(f"noise sd {noise:.3f}")
    return ", ".join(parts)


EQUALISE_BINS = 4096


def _equalise(x: torch.Tensor, bins: int = EQUALISE_BINS) -> torch.Tensor:
    """Rank transform (histogram equalisation) of each (B, 1, s, s) image in [0, 1] to
    [0, 1]: the same for any monotonic contrast change.  Ranks are counted in
    ``bins`` intensity bins (one histogram pass instead of a sort), and the
    values of one bin share its mean rank — a flat background must stay flat, not become
    a ramp in scan order that no flip or turn of the other image can match."""
    flat = x.flatten(1)
    n = flat.shape[1]
    index = (flat.clamp(0, 1) * (bins - 1)).round().long()
    offset = torch.arange(flat.shape[0], device=x.device).unsqueeze(1) * bins
    counts = torch.bincount((index + offset).flatten(), minlength=flat.shape[0] * bins)
    counts = counts.view(-1, bins).to(x.dtype)
    below = counts.cumsum(1) - counts
    mean_rank = below + (counts - 1) / 2
    return (mean_rank.gather(1, index) / max(n - 1, 1)).view_as(x)


@dataclass(frozen=True)
class _CandidateView:
    """What the final score needs of the candidate alone, computed once per candidate:
    the image (1, 1, S, S), its non-saturated pixels, its view after the common
    ``smoothing``, its estimated noise sd and the softenings a training image is tried
    under (``("blur", sigma)`` for each of ``blur_sigmas``, ``("grid", factor)`` for each
    grid the candidate is band-limited to)."""

    image: torch.Tensor
    observed: torch.Tensor
    smoothed: torch.Tensor
    noise: float
    softenings: tuple[tuple[str, float], ...]


def _candidate_view(cand: torch.Tensor, refs: torch.Tensor, config: VerificationConfig) -> _CandidateView:
    """``refs``: the training images the candidate's resolution is compared with — the
    closest look-alikes the search kept (the rest of a crowd of 30 adds nothing but time)."""
    observed = cand < SATURATED
    # clipping at 0 or 1 hides noise: estimate it where a pixel's 3×3 neighbourhood is unclipped
    unclipped = observed & (cand > 0.5 / 255)
    noise = noise_sd(cand, -F.max_pool2d(-unclipped.float(), 3, stride=1, padding=1) > 0.5)
    softenings = tuple(("blur", float(s)) for s in config.blur_sigmas) \
        + tuple(("grid", f) for f in _band_limited_factors(cand, refs, config))
    return _CandidateView(cand, observed, _gaussian_blur(cand, config.smoothing), noise, softenings)


@dataclass(frozen=True)
class _Matched:
    """Each row's training image in the candidate's frame under both photometries (module
    docstring, steps 2–3): ``images`` (2, H, 1, S, S) — fitted gamma + shading, then the
    reference's own — ``valid`` (H, 1, S, S), the pixels both show, and the fit
    (:func:`_photometric_coefficients`: ``gamma`` (H, 1), ``field`` (H, S²), ``enough`` (H,))."""

    images: torch.Tensor
    valid: torch.Tensor
    gamma: torch.Tensor
    field: torch.Tensor
    enough: torch.Tensor

    def take(self, index: torch.Tensor) -> "_Matched":
        return _Matched(self.images[:, index], self.valid[index], self.gamma[index], self.field[index],
                        self.enough[index])


def _matched(view: _CandidateView, refs: torch.Tensor, rows: _Rows,
             fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> _Matched:
    """The rows' (full-resolution shifts) references warped and photometrically matched
    (``fit``: the rows' photometric fit, made here when not given)."""
    warped, valid = _reference_in_candidate_frame(refs[rows.ref], rows.dihedral, rows.degrees, rows.scales,
                                                  rows.shifts)
    valid = valid & view.observed
    # two photometries: the fitted gamma + shading, and the reference's own (SSIM ignores a
    # global gain) — many replaced patches can pull even a robust fit off an edit's true,
    # unchanged photometry, and the best explanation is what the score means
    fit = fit if fit is not None else _photometric_coefficients(view.image, warped, valid)
    return _Matched(torch.stack([_map_photometry(warped, *fit), warped]), valid, *fit)


def _softened_scores(view: _CandidateView, matched: _Matched, softenings: tuple[tuple[str, float], ...],
                     config: VerificationConfig) -> torch.Tensor:
    """Final scores (H, len(softenings)) of matched rows (module docstring, steps 4–6): the
    better photometry of each softening, every softening in one batched SSIM."""
    _, n, *shape = matched.images.shape
    if not softenings or not n:
        return torch.zeros(n, len(softenings), device=matched.images.device)
    tau = config.smoothing
    both = matched.images.reshape(2 * n, *shape)
    softened = torch.cat([_soften(both, softening, tau) for softening in softenings])
    count = len(softenings) * 2 * n
    valid = matched.valid.repeat(2 * len(softenings), 1, 1, 1)
    noise_var = view.noise ** 2 * _noise_gain(tau)
    scores = masked_ssim(softened, view.smoothed.expand(count, -1, -1, -1), valid, config.terms, noise_var)
    scores = scores.view(len(softenings), 2, n)
    return scores.amax(1).T.clamp(-1.0, 1.0)


def _without_common_blur(view: _CandidateView, matched: _Matched, scores: torch.Tensor,
                         config: VerificationConfig) -> torch.Tensor:
    """Final scores (H, L) with the blur the two images share discounted.

    Blurring the training image by sigma to match a candidate compares two images that
    share that blur, and a shared blur raises the SSIM of any two images that are not copies
    (a neighbouring slice or an elastic edit gains +0.01, a blurred one +0.035;
    BENCHMARKS.md).  Each row whose best softening is a blur is scored once more at that
    level with both images blurred by a further sigma (the shared blur's variance doubled):
    the score's slope in shared-blur variance, and every blur level sigma of the row is
    lowered by slope × sigma² — the score extrapolated linearly to no shared blur.  A copy of
    the training image scores the same under any shared blur (slope 0: its score does not
    move); a slope below 0 counts as 0, so no score rises, and the unblurred level is never
    lowered.  Grid softenings are not discounted: a generated sample's label is itself its
    SSIM to the training image taken through the generator's grid (``../shared/DESIGN.md``)."""
    scores = scores.clone()
    sigma = torch.tensor([value if kind == "blur" else 0.0 for kind, value in view.softenings],
                         device=scores.device)
    level = scores.argmax(1)
    todo = torch.nonzero(sigma[level] > 0).flatten()
    if not config.discount_common_blur or not len(todo):
        return scores
    slope = torch.zeros(len(scores), device=scores.device)
    for lv in level[todo].unique().tolist():
        at = todo[level[todo] == lv]
        more = _more_common_blur(view, matched.take(at), view.softenings[lv][1], config)
        slope[at] = ((more - scores[at, lv]) / view.softenings[lv][1] ** 2).clamp_min(0)
    return scores - slope[:, None] * sigma[None, :] ** 2


def _more_common_blur(view: _CandidateView, matched: _Matched, sigma: float, config: VerificationConfig
                      ) -> torch.Tensor:
    """The scores (H,) of softening ("blur", ``sigma``) of ``matched`` rows with both images
    blurred by a further ``sigma``: :func:`_softened_scores` with the common smoothing raised
    from ``config.smoothing`` to its hypot with ``sigma``."""
    extra = math.hypot(sigma, config.smoothing)
    smoother = replace(view, smoothed=_gaussian_blur(view.image, extra))
    return _softened_scores(smoother, matched, (("blur", sigma),), replace(config, smoothing=extra))[:, 0]


def _nearby_softenings(softenings: tuple[tuple[str, float], ...], level: int) -> list[int]:
    """Indices of softening ``level`` and of its neighbours of the same kind: where a row
    realigned on that softening can score best (the others are not tried again)."""
    kind = softenings[level][0]
    return [j for j in (level - 1, level, level + 1) if 0 <= j < len(softenings) and softenings[j][0] == kind]


def _photometric_refine(view: _CandidateView, refs: torch.Tensor, rows: _Rows, matched: _Matched,
                        scores: torch.Tensor, config: VerificationConfig
                        ) -> tuple[_Rows, _Matched, torch.Tensor]:
    """Refine each row's alignment once more at full resolution on the objective the final
    score measures: the candidate is brought into its reference's photometry (the inverse
    of the gamma + shading fitted at the row's alignment), the reference blurred to the
    row's best softening, and Gauss–Newton aligns the two
    (``config.photometric_refine_steps`` iterations).  The
    search before it aligns rank-equalised images, on which a strong shading moves the
    optimum; this step moves it back.  ``matched``: the rows' :class:`_Matched`; ``scores``:
    their (m, len(view.softenings)) final scores.  Returns the refined rows, their
    :class:`_Matched` and their scores (-inf where not tried: softenings far from the row's
    best, rows without a photometric fit); the caller keeps whichever alignment scores
    higher."""
    gamma, field, enough = matched.gamma, matched.field, matched.enough
    log_c = torch.log(view.image.flatten(1).clamp_min(1e-4))
    in_reference_photometry = torch.exp((log_c - field) / gamma).clamp(0, 1).view(-1, 1, *view.image.shape[-2:])
    moving = torch.cat([_dihedral(in_reference_photometry[i:i + 1], *DIHEDRAL[d])
                        for i, d in enumerate(rows.dihedral.tolist())])
    level = scores.argmax(1)
    target = torch.cat([_soften(refs[int(j):int(j) + 1], view.softenings[int(lv)], 0.0)
                        for j, lv in zip(rows.ref, level)])
    refined, _ = _gauss_newton(moving, target, rows, config.photometric_refine_steps)
    # scored with the photometric fit of the old alignment: the new one is a fraction of a
    # pixel away (refitting cost 5 % of the time and moved no label on the held-out benchmarks)
    rematched = _matched(view, refs, refined, (gamma, field, enough))
    new_scores = torch.full_like(scores, -math.inf)
    for i, lv in enumerate(level.tolist()):
        near = _nearby_softenings(view.softenings, lv)
        new_scores[i, near] = _softened_scores(view, rematched.take(torch.tensor([i])),
                                               tuple(view.softenings[j] for j in near), config)[0]
    new_scores[~enough] = -math.inf
    return refined, rematched, new_scores


# --------------------------------------------------------------------------- verification

def _search(cand: torch.Tensor, refs: torch.Tensor, config: VerificationConfig
            ) -> tuple[_Rows, torch.Tensor, torch.Tensor]:
    """Alignments worth a final score, for the candidate (1, 1, S, S) against references
    (k, 1, S, S), in full-resolution pixels; each reference's best score at
    ``compare_size`` (k,), which decides which references go on; and the indices of the
    references searched past the coarse grid (the candidate's closest look-alikes).

    Coarse seeds for all references at once (:func:`_coarse_seeds`); the references within
    ``COARSE_MARGIN`` of the best (``COARSE_REFERENCES`` at most, plus the first
    ``EMBEDDING_FIRST``) have every symmetry's seed refined at ``COARSE_SIZE``, their best
    ``SEEDS_PER_REFERENCE`` again at ``compare_size`` (``refine_steps`` Gauss–Newton
    iterations each); the references within ``REFERENCE_MARGIN`` of the best there
    (``FULL_REFERENCES`` at most, plus the first, so a crowd of look-alike slices costs like a
    few) keep their ``ROWS_PER_REFERENCE`` best rows, which are refined again at full
    resolution when ``full_refine_steps`` > 0 (by default the photometric refinement is the
    only full-resolution one).  The search images are rank-equalised (any monotonic
    contrast change is irrelevant) and in local contrast (:func:`_search_view`).  The
    untransformed alignment of each of those references is kept beside them
    (:func:`_identity_rows`); the final score decides among them."""
    images = _search_images(cand, refs, COARSE_SIZE)
    seeds, coarse = _coarse_seeds(images, config)
    keep, coarse_scores = _select(seeds, coarse, 8, COARSE_REFERENCES, COARSE_MARGIN, always=EMBEDDING_FIRST)
    searched = seeds.ref[keep].unique()
    images = images.with_level(config.compare_size, searched)
    rows, scores = _refine(images, seeds.take(keep), COARSE_SIZE, COARSE_SIZE, config.refine_steps)
    keep, _ = _select(rows, scores, SEEDS_PER_REFERENCE, COARSE_REFERENCES, 2.0)
    rows, scores = _refine(images, rows.take(keep), config.compare_size, COARSE_SIZE, config.refine_steps)
    keep, ref_scores = _select(rows, scores, ROWS_PER_REFERENCE, FULL_REFERENCES, REFERENCE_MARGIN,
                               len(refs), always=1)
    # a reference set aside at the coarse grid is reported with its coarse score
    ref_scores = torch.where(torch.isnan(ref_scores), coarse_scores, ref_scores)
    size = cand.shape[-1]
    identity = _identity_rows(rows.ref[keep].unique())
    mid = _Rows.cat([rows.take(keep).rescaled(size / config.compare_size), identity])
    if config.full_refine_steps <= 0:
        return mid, ref_scores, searched
    full_views = _gaussian_blur(_dihedral_views(images.cand), FULL_REFINE_SIGMA)
    full_refs = torch.zeros_like(images.refs)
    needed = mid.ref.unique()
    full_refs[needed] = _gaussian_blur(images.refs[needed], FULL_REFINE_SIGMA)
    refined, _ = _gauss_newton(*_warp_rows(full_views, full_refs, mid), mid, config.full_refine_steps)
    return _Rows.cat([refined, identity]), ref_scores, searched


def _identity_rows(refs: torch.Tensor) -> _Rows:
    """The untransformed alignment for each of ``refs``: a generator's samples come in the
    training images' frame, and one large edit can pull the search elsewhere."""
    n = len(refs)
    return _Rows(refs, torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.ones(n), torch.zeros(n, 2))


def _best_per_reference(scores: torch.Tensor, rows: _Rows) -> torch.Tensor:
    """Index of each reference's best-scoring row (references in increasing order)."""
    order = torch.sort(-scores, stable=True).indices  # best first, ties in row order
    order = order[torch.sort(rows.ref[order], stable=True).indices]
    ref = rows.ref[order]
    first = torch.ones(len(order), dtype=torch.bool, device=ref.device)
    first[1:] = ref[1:] != ref[:-1]
    return order[first]


def _alignment(rows: _Rows, i: int, scores: torch.Tensor, view: _CandidateView) -> Alignment:
    level = int(scores.argmax())
    h = rows.hypothesis(i)
    h = _Hypothesis(h.flip, h.turns, round(h.degrees, 1), round(h.scale, 3))
    shift = (float(rows.shifts[i, 0]), float(rows.shifts[i, 1]))
    kind, value = view.softenings[level]
    blur, grid = (value, 1.0) if kind == "blur" else (0.0, value)
    return Alignment(score=float(scores[level]), transform=describe(h, shift, blur, view.noise, grid),
                     dihedral=(h.flip, h.turns), degrees=h.degrees, scale=h.scale, shift=shift,
                     blur_sigma=blur, noise_sd=round(view.noise, 4), grid_factor=grid)


def _not_verified(score: float, best: float) -> Alignment:
    return Alignment(float("nan"), f"not verified: search score {score:.3f}, {best - score:.3f} below the best "
                                   f"neighbour's", verified=False)


def _verify_references(cand: torch.Tensor, refs: torch.Tensor, config: VerificationConfig) -> list[Alignment]:
    """:func:`verify_candidate` on tensors with no constant image."""
    rows, ref_scores, searched = _search(cand, refs, config)
    view = _candidate_view(cand, refs[searched], config)
    matched = _matched(view, refs, rows)
    first = _softened_scores(view, matched, view.softenings[:1], config)
    best = _best_per_reference(first[:, 0], rows)
    rows, matched = rows.take(best), matched.take(best)
    scores = torch.cat([first[best], _softened_scores(view, matched, view.softenings[1:], config)], 1)
    close = torch.nonzero(scores.amax(1) >= scores.amax() - PHOTOMETRIC_MARGIN).flatten()
    polished, polished_matched, polished_scores = _photometric_refine(
        view, refs, rows.take(close), matched.take(close), scores[close], config)
    # both alignments of a refined row discounted before the better is kept: the refinement
    # never lowers a row's final score
    scores = _without_common_blur(view, matched, scores, config)
    polished_scores = _without_common_blur(view, polished_matched, polished_scores, config)
    better = polished_scores.amax(1) > scores[close].amax(1)
    rows, scores = _with_polished(rows, scores, close[better], polished.take(better), polished_scores[better])
    top = float(torch.nan_to_num(ref_scores, nan=-2.0).max())
    out = [_not_verified(float(s), top) for s in ref_scores]
    for i in range(len(rows)):
        out[int(rows.ref[i])] = _alignment(rows, i, scores[i], view)
    return out


def _with_polished(rows: _Rows, scores: torch.Tensor, index: torch.Tensor, polished: _Rows,
                   polished_scores: torch.Tensor) -> tuple[_Rows, torch.Tensor]:
    """``rows`` and their ``scores`` (H, L) with those at ``index`` replaced by the
    photometric refinement's (same references and symmetries, refined geometry)."""
    degrees, scales, shifts = rows.degrees.clone(), rows.scales.clone(), rows.shifts.clone()
    degrees[index], scales[index], shifts[index] = polished.degrees, polished.scales, polished.shifts
    scores = scores.clone()
    scores[index] = polished_scores
    return rows.with_geometry(degrees, scales, shifts), scores


def verify_candidate(candidate: np.ndarray, references: np.ndarray,
                     config: VerificationConfig = VerificationConfig()) -> list[Alignment]:
    """Verify one candidate against each of its references (e.g. its nearest training
    images by embedding), all references in one batched search.

    A reference whose alignment at the search resolution is far (``COARSE_MARGIN``,
    ``REFERENCE_MARGIN``) below the best reference's, or beyond the ``COARSE_REFERENCES``
    / ``FULL_REFERENCES`` best, gets no final score: its :class:`Alignment` has
    ``verified=False`` and a NaN score (it cannot be the best match).  The first
    ``EMBEDDING_FIRST`` references (pass them nearest first) are never set aside at the
    coarse grid, the first never at all: in a cohort of look-alike reslicings the coarse
    grid cannot tell the source from its neighbours.  References near the best are scored
    exactly as :func:`verify_pair` scores them alone.

    Args:
        candidate: (S, S) float in [0, 1].
        references: (k, S, S) float in [0, 1], same S.
        config: see :class:`deepssim.config.VerificationConfig`.
    Returns:
        k :class:`Alignment` objects, in the order of ``references``.
    """
    candidate = np.asarray(candidate, np.float32)
    references = np.asarray(references, np.float32)
    if references.ndim != 3 or candidate.ndim != 2 or references.shape[1:] != candidate.shape \
            or candidate.shape[0] != candidate.shape[1]:
        raise ValueError(f"need a square 2D candidate and (k, S, S) references of its size, got "
                         f"{candidate.shape} and {references.shape}")
    constant = Alignment(0.0, "constant image: nothing to align")
    if candidate.std() == 0:
        return [constant] * len(references)
    usable = [j for j in range(len(references)) if references[j].std() > 0]
    out = [constant] * len(references)
    if usable:
        with torch.no_grad(), _device_context(config.device):
            found = _verify_references(_to_tensor(candidate), torch.tensor(references[usable])[:, None], config)
        for j, alignment in zip(usable, found):
            out[j] = alignment
    return out


def _device_context(device: str):
    """Where the verification computes: on a GPU, torch's device context makes every
    tensor created inside follow it (the same code on either device); on the CPU no context
    at all, because it intercepts every torch call (6 % of a CPU verification)."""
    from deepssim.metric.embed import resolve_device

    resolved = resolve_device(device)
    return contextlib.nullcontext() if resolved.type == "cpu" else resolved


def verify_pair(candidate: np.ndarray, reference: np.ndarray,
                config: VerificationConfig = VerificationConfig()) -> Alignment:
    """Best aligned SSIM of ``candidate`` against ``reference``.

    Args:
        candidate, reference: (S, S) float arrays in [0, 1] (model inputs), same shape.
        config: rotation grid, ``compare_size`` (the side at which the alignment is
            searched), refinement iterations, SSIM ``terms``, ``smoothing``, ``blur_sigmas``.
    Returns:
        :class:`Alignment` — ``score`` in [-1, 1] (module docstring) and the transform.
    """
    candidate, reference = np.asarray(candidate), np.asarray(reference)
    if candidate.shape != reference.shape or candidate.ndim != 2 or candidate.shape[0] != candidate.shape[1]:
        raise ValueError(f"need two equal square 2D images, got {candidate.shape} and {reference.shape}")
    return verify_candidate(candidate, reference[None], config)[0]


def aligned_reference(reference: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The training image carried into the candidate's frame by ``alignment`` (undoing its
    flip/turn, rotation, zoom and shift): what a reader compares the candidate with.

    Args:
        reference: (S, S) float image in [0, 1].
        alignment: a verified :class:`Alignment` of a candidate against this reference.
    Returns:
        (S, S) float32; pixels the reference does not cover are 0.
    """
    flip, turns = alignment.dihedral
    ref = _to_tensor(np.asarray(reference, np.float32))
    with torch.no_grad():
        warped, _ = _reference_in_candidate_frame(
            ref, torch.tensor([DIHEDRAL.index((bool(flip), int(turns)))]), torch.tensor([alignment.degrees]),
            torch.tensor([alignment.scale]), torch.tensor([list(alignment.shift)], dtype=torch.float32))
    return warped[0, 0].cpu().numpy().astype(np.float32)


def verify_candidates(candidates: np.ndarray, references: np.ndarray,
                      config: VerificationConfig = VerificationConfig()
                      ) -> tuple[np.ndarray, list[list[Alignment]]]:
    """Verify each candidate against each of its ``k`` references.

    Args:
        candidates: (Q, S, S) float in [0, 1].
        references: (Q, k, S, S) float in [0, 1] — e.g. the top-k training images by embedding.
    Returns:
        scores (Q, k) float32 (NaN for references not verified, see
        :func:`verify_candidate`) and the matching ``Alignment`` objects (Q lists of k).
    """
    candidates, references = np.asarray(candidates), np.asarray(references)
    if references.ndim != 4 or references.shape[0] != candidates.shape[0]:
        raise ValueError(f"references must be (Q, k, S, S) with Q={candidates.shape[0]}, "
                         f"got {references.shape}")
    alignments = [verify_candidate(c, refs, config) for c, refs in zip(candidates, references)]
    scores = np.array([[a.score for a in row] for row in alignments], dtype=np.float32)
    return scores.reshape(references.shape[:2]), alignments
