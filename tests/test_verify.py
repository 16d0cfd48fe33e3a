"""Verification: alignment search + robust aligned SSIM (no model needed)."""

import numpy as np
import pytest
import torch

from deepssim.config import VerificationConfig
from deepssim.ssim import reference_ssim
from deepssim.verify import Alignment, masked_ssim, verify_candidates, verify_pair

from realdata import load_slice as load


def disguised_copy(image: np.ndarray) -> np.ndarray:
    """Flip, quarter turn, gamma 0.6, Gaussian blur sigma 0.8 px."""
    from scipy.ndimage import gaussian_filter

    out = np.rot90(np.fliplr(image), 1) ** 0.6
    return np.clip(gaussian_filter(out, 0.8), 0, 1).astype(np.float32)


def test_recovers_flipped_turned_recontrasted_blurred_copy():
    ref = load("colin27", 90)
    cand = disguised_copy(ref)
    assert reference_ssim(cand, ref) < 0.6
    result = verify_pair(cand, ref, VerificationConfig())
    assert isinstance(result, Alignment)
    assert result.score > 0.85
    assert result.dihedral[0] or result.dihedral[1]  # a flip or turn was needed
    assert "hist-matched" in result.transform


def test_unrelated_subject_stays_below_similar():
    ref = load("colin27", 90)
    other = load("nibabel_example4d", 12)
    assert verify_pair(other, ref).score < 0.6
    assert verify_pair(disguised_copy(other), ref).score < 0.6


def test_masked_ssim_equals_reference_with_full_mask():
    rng = np.random.default_rng(0)
    a = rng.random((64, 64))
    b = a + 0.4 * rng.random((64, 64))
    got = float(masked_ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None]))
    assert got == pytest.approx(reference_ssim(a, b), abs=1e-9)


def test_verify_candidates_shapes_and_identity():
    ref = load("colin27", 90)
    other = load("nibabel_example4d", 12)
    scores, alignments = verify_candidates(np.stack([ref]), np.stack([[ref, other]]))
    assert scores.shape == (1, 2) and len(alignments[0]) == 2
    assert scores[0, 0] > 0.99 > scores[0, 1]
    with pytest.raises(ValueError):
        verify_candidates(np.stack([ref]), np.stack([ref, other]))


def test_refinement_recovers_off_grid_rotation_zoom_shift():
    """A copy rotated by 90° + 13.5° (between grid steps), zoomed 1.07, shifted, flipped and
    gamma-changed: raw SSIM misses it; the grid alone under-scores it; refinement recovers it."""
    import torch.nn.functional as F

    ref = load("colin27", 90)
    x = torch.tensor(np.rot90(np.flipud(ref), 1).copy())[None, None] ** 1.4
    a, z = np.deg2rad(13.5), 1 / 1.07
    theta = torch.tensor([[[np.cos(a) * z, -np.sin(a) * z, 0.06], [np.sin(a) * z, np.cos(a) * z, -0.1]]],
                         dtype=torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    cand = F.grid_sample(x, grid, align_corners=False)[0, 0].numpy()
    assert reference_ssim(cand, ref) < 0.5
    refined = verify_pair(cand, ref, VerificationConfig())
    grid_only = verify_pair(cand, ref, VerificationConfig(refine_steps=0))
    assert refined.score > 0.9
    assert refined.score > grid_only.score
    assert refined.dihedral != (False, 0)


def test_fusion_modes():
    from deepssim.pipeline import fuse_scores

    emb, ver = np.array([0.9, 0.3]), np.array([0.5, 0.8])
    assert fuse_scores(emb, ver, "max").tolist() == [0.9, 0.8]
    assert fuse_scores(emb, ver, "verification").tolist() == [0.5, 0.8]
    with pytest.raises(ValueError):
        fuse_scores(emb, ver, "mean")
