"""Batched, seeded image transforms.

Two families, both composable callables on batches of shape (B, 1, H, W) with
intensities in [0, 1], and both drawing randomness only from the ``torch.Generator``
they are given (so a seed reproduces them exactly on one device):

* **Nuisance** transforms (:class:`NuisanceAugment`) change how an image looks but not
  what it shows: flips, 90° turns, rotation, translation, zoom, gamma, smooth bias
  field, blur and noise.  DeepSSIM is trained so that these do not move the score — a
  flipped, re-contrasted copy of a training scan is still a copy.
* **Structural edits** (:func:`elastic_edit`, :func:`blend_edit`, :func:`patch_edit`)
  change what an image shows, producing mid-range aligned-SSIM targets for training and
  "similar" candidates for benchmarks.

Why not MONAI's per-image ``Rand*`` dictionary transforms: at ~1 ms per transform per
image they would make augmentation, not the network, the training bottleneck; these
batched versions run on the training device (GPU when present).  MONAI's
``GaussianFilter`` layer does the blurring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def _chance(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


@dataclass
class RandomDihedral:
    """Flip each axis with probability ``p_flip``; turn by a random multiple of 90° with
    probability ``p_turn``.  Square images only for turns."""

    p_flip: float = 0.5
    p_turn: float = 0.25

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        out = x.clone()
        for dim in (2, 3):
            flip = _chance(n, self.p_flip, gen, x.device)
            out[flip] = out[flip].flip(dim)
        turns = torch.randint(1, 4, (n,), generator=gen, device=x.device)
        turns[~_chance(n, self.p_turn, gen, x.device)] = 0
        if x.shape[2] == x.shape[3]:
            for k in (1, 2, 3):
                sel = turns == k
                out[sel] = torch.rot90(out[sel], k, dims=(2, 3))
        return out


@dataclass
class RandomAffine:
    """Rotation within ±``degrees``, translation within ±``shift`` (fraction of the
    side), isotropic zoom in ``zoom``; bilinear, zero padding."""

    degrees: float = 15.0
    shift: float = 0.08
    zoom: tuple[float, float] = (0.9, 1.1)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        angle = _uniform(n, -self.degrees, self.degrees, gen, dev) * math.pi / 180
        scale = 1.0 / _uniform(n, self.zoom[0], self.zoom[1], gen, dev)
        tx = _uniform(n, -2 * self.shift, 2 * self.shift, gen, dev)
        ty = _uniform(n, -2 * self.shift, 2 * self.shift, gen, dev)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class RandomGamma:
    """``x ** gamma`` with gamma uniform in ``gamma``."""

    gamma: tuple[float, float] = (0.5, 1.6)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        g = _uniform(x.shape[0], *self.gamma, gen, x.device).view(-1, 1, 1, 1)
        return x.clamp(0, 1).pow(g)


@dataclass
class RandomBiasField:
    """Multiply by ``exp(p(x, y))`` for a random quadratic polynomial ``p`` whose
    coefficients lie in ±``strength`` (a smooth shading, as MR coils produce)."""

    strength: float = 0.35
    p: float = 0.7

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, h, 1)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, w)
        c = (2 * torch.rand(n, 5, generator=gen, device=x.device) - 1).to(x.dtype) * self.strength
        c[~_chance(n, self.p, gen, x.device)] = 0
        c = c.view(n, 5, 1, 1)
        field = c[:, 0] * xs + c[:, 1] * ys + c[:, 2] * xs * xs + c[:, 3] * ys * ys + c[:, 4] * xs * ys
        return x * torch.exp(field).unsqueeze(1)


@dataclass
class RandomBlur:
    """Gaussian blur with sigma (pixels) drawn from ``sigmas`` (a few fixed levels keep
    it batched), applied with probability ``p``."""

    sigmas: Sequence[float] = (0.5, 0.8, 1.1)
    p: float = 0.4

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from monai.networks.layers import GaussianFilter

        n = x.shape[0]
        level = torch.randint(0, len(self.sigmas), (n,), generator=gen, device=x.device)
        level[~_chance(n, self.p, gen, x.device)] = -1
        out = x.clone()
        for i, sigma in enumerate(self.sigmas):
            sel = level == i
            if sel.any():
                out[sel] = GaussianFilter(2, sigma).to(x.device)(x[sel])
        return out


@dataclass
class RandomNoise:
    """Additive Gaussian noise with standard deviation uniform in ``std`` (intensity units),
    applied with probability ``p``."""

    std: tuple[float, float] = (0.0, 0.03)
    p: float = 0.5

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        s = _uniform(n, *self.std, gen, x.device) * _chance(n, self.p, gen, x.device)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return x + noise * s.view(-1, 1, 1, 1).to(x.dtype)


class Compose:
    """Apply transforms in order, then clamp to [0, 1]."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, gen)
        return x.clamp(0.0, 1.0)


def nuisance_augment(strength: float = 1.0) -> Compose:
    """The structure-preserving augmentations DeepSSIM must be invariant to.

    ``strength`` scales geometric and photometric ranges (1.0 = the training defaults:
    rotation ±15°, shift ±8 %, zoom 0.9–1.1, gamma 0.5–1.6, bias field, blur σ ≤ 1.1 px,
    noise σ ≤ 0.03)."""
    s = strength
    return Compose([
        RandomDihedral(),
        RandomAffine(degrees=15.0 * s, shift=0.08 * s, zoom=(1 - 0.1 * s, 1 + 0.1 * s)),
        RandomGamma((1 - 0.5 * s, 1 + 0.6 * s)),
        RandomBiasField(strength=0.35 * s),
        RandomBlur(),
        RandomNoise(std=(0.0, 0.03 * s)),
    ])


# --------------------------------------------------------------------------- structural edits

def elastic_edit(x: torch.Tensor, magnitude: torch.Tensor, gen: torch.Generator,
                 grid_size: int = 6) -> torch.Tensor:
    """Smooth random deformation; ``magnitude`` (B,) is the displacement scale as a
    fraction of the image side (0.02 mild … 0.12 strong)."""
    n, _, h, w = x.shape
    coarse = torch.randn(n, 2, grid_size, grid_size, generator=gen, device=x.device, dtype=x.dtype)
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    flow = flow * magnitude.view(-1, 1, 1, 1).to(x.dtype) * 2
    base = F.affine_grid(torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(n, 2, 3),
                         list(x.shape), align_corners=False)
    grid = base + flow.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def blend_edit(x: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(1 - alpha) * x + alpha * other`` with per-image ``alpha`` (B,)."""
    a = alpha.view(-1, 1, 1, 1).to(x.dtype)
    return (1 - a) * x + a * other


def patch_edit(x: torch.Tensor, other: torch.Tensor, fraction: torch.Tensor,
               gen: torch.Generator, patches: int = 3) -> torch.Tensor:
    """Replace ``patches`` random squares, covering about ``fraction`` (B,) of the image in
    total, with the same region of ``other``."""
    n, _, h, w = x.shape
    side = (torch.sqrt(fraction / patches).clamp(0.02, 0.9) * h).long().clamp_min(2)
    out = x.clone()
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    for _ in range(patches):
        y0 = (torch.rand(n, generator=gen, device=x.device) * (h - side)).long()
        x0 = (torch.rand(n, generator=gen, device=x.device) * (w - side)).long()
        s = side.view(-1, 1, 1)
        mask = ((ys >= y0.view(-1, 1, 1)) & (ys < y0.view(-1, 1, 1) + s)
                & (xs >= x0.view(-1, 1, 1)) & (xs < x0.view(-1, 1, 1) + s)).unsqueeze(1)
        out = torch.where(mask, other, out)
    return out
