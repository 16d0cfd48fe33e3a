"""Training pairs that cover the whole SSIM range.

An :class:`ImagePool` holds preprocessed images (B, 1, S, S) in [0, 1] with their
subject, volume and slice position.  :class:`PairSampler` draws aligned pairs
``(a, b)`` of five kinds — an image with itself, with a structurally edited version of
itself (elastic deformation, blending, patch replacement), with a neighbouring slice of
its volume, with another image of the same subject, with another subject — labels each
with the aligned reference SSIM (:func:`deepssim.metric.ssim.ssim_torch`), and resamples so the
target histogram is roughly flat.  Nuisance augmentation is applied later, by the
trainer, to each side independently.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from deepssim.metric.augment import blend_edit, elastic_edit, patch_edit
from deepssim.metric.ssim import ssim_torch


@dataclass
class ImagePool:
    """Images sorted by (volume, position) so that neighbours are adjacent rows.

    images:   (N, 1, S, S) float32 in [0, 1]
    subject:  (N,) int64 subject index (split unit: never split a subject)
    volume:   (N,) int64 volume index, unique per stack of slices (-1: lone image)
    position: (N,) int64 slice index inside its volume
    """

    images: torch.Tensor
    subject: torch.Tensor
    volume: torch.Tensor
    position: torch.Tensor
    subject_names: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "ImagePool":
        return ImagePool(self.images.to(device), self.subject.to(device), self.volume.to(device),
                         self.position.to(device), self.subject_names)

    def select_subjects(self, names: set[str]) -> "ImagePool":
        keep_ids = [i for i, n in enumerate(self.subject_names) if n in names]
        mask = torch.isin(self.subject, torch.tensor(keep_ids, device=self.subject.device))
        return ImagePool(self.images[mask], self.subject[mask], self.volume[mask],
                         self.position[mask], self.subject_names)

    @staticmethod
    def concat(pools: list["ImagePool"]) -> "ImagePool":
        """Join pools, renumbering subjects and volumes so they stay distinct."""
        images, subject, volume, position, names = [], [], [], [], []
        vol_offset = 0
        for p in pools:
            subject.append(p.subject + len(names))
            vol = p.volume.clone()
            vol[vol >= 0] += vol_offset
            vol_offset = max(vol_offset, int(vol.max()) + 1) if len(vol) else vol_offset
            volume.append(vol)
            images.append(p.images)
            position.append(p.position)
            names.extend(p.subject_names)
        pool = ImagePool(torch.cat(images), torch.cat(subject), torch.cat(volume), torch.cat(position), names)
        return pool.sorted()

    def sorted(self) -> "ImagePool":
        key = self.volume * 100_000 + self.position
        lone = self.volume < 0
        key[lone] = -1 - torch.arange(int(lone.sum()), device=key.device)
        order = torch.argsort(key)
        return ImagePool(self.images[order], self.subject[order], self.volume[order],
                         self.position[order], self.subject_names)


@dataclass(frozen=True)
class PairMix:
    """Relative frequency of each pair kind before histogram balancing."""

    identical: float = 0.12
    edited: float = 0.38
    neighbour: float = 0.2
    same_subject: float = 0.1
    other_subject: float = 0.2
    max_neighbour_offset: int = 8
    bins: int = 12
    oversample: int = 3
    top_bin_boost: float = 2.0  # copies matter most to the gate: over-represent targets near 1


class PairSampler:
    """Draws balanced, labelled, aligned pairs from a pool on the pool's device."""

    KINDS = ("identical", "edited", "neighbour", "same_subject", "other_subject")

    def __init__(self, pool: ImagePool, mix: PairMix = PairMix(), seed: int = 0):
        self.pool, self.mix = pool, mix
        self.device = pool.images.device
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        weights = torch.tensor([getattr(mix, k) for k in self.KINDS], dtype=torch.float)
        self.kind_probs = (weights / weights.sum()).to(self.device)

    def _randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.gen, device=self.device)

    def _rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.gen, device=self.device)

    def _partner_index(self, idx: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        p, n = self.pool, len(self.pool)
        partner = idx.clone()
        # neighbour: same volume, |offset| in [1, max]
        offset = self._randint(self.mix.max_neighbour_offset, len(idx)) + 1
        offset = torch.where(self._rand(len(idx)) < 0.5, -offset, offset)
        cand = (idx + offset).clamp(0, n - 1)
        ok = (p.volume[cand] == p.volume[idx]) & (p.volume[idx] >= 0) & (cand != idx)
        sel = kind == 2
        partner[sel] = torch.where(ok[sel], cand[sel], idx[sel])
        # same subject / other subject: rejection sampling, a few tries
        for k, want_same in ((3, True), (4, False)):
            sel = (kind == k).nonzero().flatten()
            found = idx[sel].clone()
            for _ in range(8):
                trial = self._randint(n, len(sel))
                same = p.subject[trial] == p.subject[idx[sel]]
                good = (same if want_same else ~same) & (trial != idx[sel])
                found = torch.where(good & (found == idx[sel]), trial, found)
            partner[sel] = found
        return partner

    def _edit(self, a: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        which = self._randint(4, n)
        out = a.clone()
        strength = self._rand(n)
        masks = [which == i for i in range(4)]
        if masks[0].any():
            out[masks[0]] = elastic_edit(a[masks[0]], 0.01 + 0.12 * strength[masks[0]], self.gen)
        if masks[1].any():
            out[masks[1]] = blend_edit(a[masks[1]], other[masks[1]], 0.1 + 0.6 * strength[masks[1]])
        if masks[2].any():
            out[masks[2]] = patch_edit(a[masks[2]], other[masks[2]], 0.05 + 0.5 * strength[masks[2]], self.gen)
        if masks[3].any():
            m = masks[3]
            warped = elastic_edit(a[m], 0.01 + 0.06 * strength[m], self.gen)
            out[m] = blend_edit(warped, other[m], 0.3 * self._rand(int(m.sum())))
        return out

    def draw_raw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unbalanced pairs: ``(a, b, target, kind)``; a, b are (n, 1, S, S)."""
        idx = self._randint(len(self.pool), n)
        kind = torch.multinomial(self.kind_probs, n, replacement=True, generator=self.gen)
        partner = self._partner_index(idx, kind)
        a = self.pool.images[idx]
        b = self.pool.images[partner]
        edited = kind == 1
        if edited.any():
            donors = self.pool.images[self._randint(len(self.pool), int(edited.sum()))]
            b[edited] = self._edit(a[edited], donors)
        with torch.no_grad():
            target = ssim_torch(a, b).float()
        valid = torch.isfinite(target)
        return a[valid], b[valid], target[valid], kind[valid]

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` pairs with a roughly flat target histogram over [-0.2, 1]."""
        a, b, target, _ = self.draw_raw(n * self.mix.oversample)
        edges = torch.linspace(-0.2, 1.0, self.mix.bins + 1, device=self.device)
        bin_of = torch.bucketize(target.clamp(-0.2, 1.0), edges[1:-1])
        counts = torch.bincount(bin_of, minlength=self.mix.bins).float()
        weight = 1.0 / counts[bin_of]
        weight[bin_of == self.mix.bins - 1] *= self.mix.top_bin_boost
        take = torch.multinomial(weight, min(n, len(weight)), replacement=False, generator=self.gen)
        return a[take], b[take], target[take]
