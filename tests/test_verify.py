"""Verification: alignment search + robust aligned SSIM (no model needed)."""

import numpy as np
import pytest
import torch

from deepssim.config import VerificationConfig
from deepssim.metric.ssim import reference_ssim
from deepssim.audit.verify import Alignment, masked_ssim, verify_candidate, verify_candidates, verify_pair

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
    assert "gamma+shading fitted" in result.transform


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
    assert scores[0, 0] > 0.99
    # the unrelated reference aligns far worse than the copy's source: set aside, unscored
    assert np.isnan(scores[0, 1]) and not alignments[0][1].verified
    assert "not verified" in alignments[0][1].transform
    assert verify_pair(ref, other).score < 0.6  # scored alone, it is scored
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
    grid_only = verify_pair(cand, ref, VerificationConfig(refine_steps=0, full_refine_steps=0,
                                                          photometric_refine_steps=0))
    assert refined.score > 0.9
    assert refined.score > grid_only.score
    assert refined.dihedral != (False, 0)
    # the optional full-resolution refinement of the search images finds it as well
    assert verify_pair(cand, ref, VerificationConfig(full_refine_steps=3)).score > 0.9


def test_fusion_modes():
    from deepssim.audit.pipeline import fuse_scores

    emb, ver = np.array([0.9, 0.3]), np.array([0.5, 0.8])
    assert fuse_scores(emb, ver, "max").tolist() == [0.9, 0.8]
    assert fuse_scores(emb, ver, "verification").tolist() == [0.5, 0.8]
    with pytest.raises(ValueError):
        fuse_scores(emb, ver, "mean")


def test_equalise_keeps_a_flat_background_flat():
    """Ties share one rank: a zero background must not become a ramp in scan order
    (which no flip of the other image could match)."""
    from deepssim.audit.verify import _equalise

    img = np.zeros((32, 32), np.float32)
    img[8:24, 8:24] = np.linspace(0.2, 1.0, 256, dtype=np.float32).reshape(16, 16)
    ranks = _equalise(torch.tensor(img)[None, None])[0, 0].numpy()
    background = ranks[img == 0]
    assert background.max() == background.min()
    assert (ranks[img > 0] > background.max()).all()


def test_sampling_grid_is_affine_grids():
    """The warps' sampling points, made as outer sums, are torch's own affine grid: the
    pixel-centre convention every warp (and the report's aligned training image) relies on."""
    import torch.nn.functional as F
    from deepssim.audit.verify import _sampling_grid, _theta

    gen = torch.Generator().manual_seed(0)
    for size in (32, 64, 128):
        theta = _theta(torch.randn(5, generator=gen) * 10, 0.9 + 0.2 * torch.rand(5, generator=gen),
                       torch.randn(5, 2, generator=gen) * 3, size)
        expected = F.affine_grid(theta, [5, 1, size, size], align_corners=False)
        assert torch.allclose(_sampling_grid(theta, size).permute(0, 2, 3, 1), expected, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 1.1, 1.5])
def test_narrow_blur_as_shifted_sums_is_the_convolution(sigma, monkeypatch):
    from deepssim.audit import verify

    x = torch.tensor(np.stack([load("colin27", 80), load("colin27", 90)]))[:, None]
    shifted = verify._gaussian_blur(x, sigma)
    monkeypatch.setattr(verify, "SHIFTED_SUM_RADIUS", 0)  # every kernel as a convolution
    convolved = verify._gaussian_blur(x, sigma)
    assert torch.allclose(shifted, convolved, atol=1e-6)
    assert (shifted - x).abs().max() > 0.05  # it did blur


def test_realigned_rows_are_rescored_at_their_softening_and_its_neighbours_of_the_same_kind():
    from deepssim.audit.verify import _nearby_softenings

    softenings = (("blur", 0.0), ("blur", 0.5), ("blur", 0.8), ("grid", 2.0), ("grid", 3.0))
    assert _nearby_softenings(softenings, 0) == [0, 1]
    assert _nearby_softenings(softenings, 1) == [0, 1, 2]
    assert _nearby_softenings(softenings, 2) == [1, 2]  # a blur's neighbour is never a grid
    assert _nearby_softenings(softenings, 3) == [3, 4]
    assert _nearby_softenings(softenings, 4) == [3, 4]


def test_noise_sd_estimates_added_noise():
    from deepssim.audit.verify import noise_sd

    ref = load("colin27", 90)
    rng = np.random.default_rng(0)
    for sd in (0.01, 0.03):
        noisy = torch.tensor(ref + rng.normal(0, sd, ref.shape).astype(np.float32))[None, None]
        assert noise_sd(noisy) == pytest.approx(sd, rel=0.25)
    assert noise_sd(torch.tensor(ref)[None, None]) < 0.005


def test_photometric_fit_recovers_gamma_and_shading():
    from deepssim.audit.verify import photometric_fit

    ref = torch.tensor(load("colin27", 90))[None, None]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 128), indexing="ij")
    cand = (ref ** 0.6 * torch.exp(0.4 * xx - 0.3 * yy ** 2)).clamp(0, 1)
    valid = torch.ones_like(ref, dtype=torch.bool)
    mapped = photometric_fit(cand, ref, valid)
    inside = (ref > 0.1) & (cand < 0.99)
    assert (mapped - cand)[inside].abs().max() < 0.02
    assert (ref - cand)[inside].abs().mean() > 0.1  # the change was not negligible


def test_large_batches_give_each_image_its_own_result():
    """SSIM and the photometric fit run a few images at a time (cache-sized chunks): a batch
    larger than a chunk, with one noise level per image, gives every image what it gets alone."""
    from deepssim.audit.verify import PHOTOMETRIC_CHUNK, SSIM_CHUNK, photometric_fit

    n = max(SSIM_CHUNK, PHOTOMETRIC_CHUNK) * 2 + 1
    refs = torch.tensor(np.stack([load("colin27", 60 + 5 * i) for i in range(n)]))[:, None]
    cand = torch.tensor(load("colin27", 90))[None, None] ** 0.7
    valid = torch.rand(n, 1, 128, 128, generator=torch.Generator().manual_seed(0)) > 0.05
    noise = torch.linspace(0.0, 1e-3, n)
    batched = masked_ssim(refs, cand.expand(n, -1, -1, -1), valid, "ssim", noise)
    alone = torch.cat([masked_ssim(refs[i:i + 1], cand, valid[i:i + 1], "ssim", noise[i]) for i in range(n)])
    assert torch.equal(batched, alone)
    assert len(set(batched.tolist())) == n  # the images (and noise levels) were told apart
    fitted = photometric_fit(cand, refs, valid)
    assert torch.equal(fitted, torch.cat([photometric_fit(cand, refs[i:i + 1], valid[i:i + 1]) for i in range(n)]))


def test_noise_is_discounted_not_counted_as_structure():
    ref = load("colin27", 90)
    noisy = np.clip(ref + np.random.default_rng(1).normal(0, 0.04, ref.shape), 0, 1).astype(np.float32)
    assert reference_ssim(noisy, ref) < 0.85
    got = torch.tensor(noisy, dtype=torch.float64)[None, None]
    plain = float(masked_ssim(torch.tensor(ref, dtype=torch.float64)[None, None], got))
    debiased = float(masked_ssim(torch.tensor(ref, dtype=torch.float64)[None, None], got, noise_var_b=0.04 ** 2))
    assert debiased > plain + 0.05 and debiased > 0.9
    assert verify_pair(noisy, ref).score > 0.9


def test_structural_edit_scores_below_a_nuisance_copy_of_the_same_image():
    """What separates similar from duplicate: the same training image under the same
    nuisances scores > 0.85 as a copy and <= 0.85 once blended with another subject's
    slice to an aligned SSIM of ~0.7."""
    from deepssim.evaluation.benchmark import _nuisance, similar_edit

    ref = load("colin27", 90)
    other = load("nibabel_example4d", 12)
    edited, truth = similar_edit(ref, other, "blend", 0.7, seed=0)
    assert 0.6 < truth <= 0.8
    copies = _nuisance(np.stack([ref, edited]), seed=5, strength=0.6)
    dup, sim = verify_pair(copies[0], ref).score, verify_pair(copies[1], ref).score
    assert dup > 0.85 >= sim
    assert sim > 0.5  # still recognisably related


def test_verification_is_repeatable_to_the_bit():
    """The same pair must give the same score every time (an audit's outputs are compared
    byte for byte): the photometric least squares in float32 LAPACK varied by ~1e-6 from
    call to call with this very pair."""
    ref = load("colin27", 60)
    cand = disguised_copy(load("colin27", 90))
    runs = [verify_pair(cand, ref) for _ in range(4)]
    assert len({(r.score, r.transform) for r in runs}) == 1, [r.score for r in runs]


def test_neighbours_to_verify_goes_past_top_k_only_where_scores_crowd():
    config = VerificationConfig(top_k=5, margin=0.05, max_k=15)
    crowded = [0.91, 0.90, 0.90, 0.89, 0.88, 0.88, 0.87, 0.865, 0.80, 0.70]
    assert config.neighbours_to_verify(np.array(crowded)) == 8  # every score >= 0.86
    assert config.neighbours_to_verify(np.array([0.9, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])) == 5
    assert config.neighbours_to_verify(np.full(40, 0.9)) == 15  # max_k caps the cost
    assert config.neighbours_to_verify(np.array([0.9, 0.89, 0.88])) == 3  # fewer were searched


@pytest.mark.parametrize("values", [{"top_k": 0}, {"top_k": 6, "max_k": 5}, {"margin": -0.01}])
def test_inconsistent_neighbour_settings_are_rejected(values):
    with pytest.raises(ValueError, match="top_k"):
        VerificationConfig(**values)


def test_copy_whose_source_ranks_below_top_k_is_found_when_neighbours_crowd():
    """A copy's source at rank 7: the embedding over-scores look-alike slices of one series
    (dev benchmark: a noisy EPI copy's source ranked 7th of 15 near-identical slices).
    Verification goes down a ranking whose scores crowd within ``margin`` of the best, and
    stops at ``top_k`` where they do not."""
    from deepssim.audit.pipeline import verify_neighbours

    source = load("colin27", 90)
    others = [load(s, z) for s, z in (("colin27", 40), ("nibabel_example4d", 12), ("icbm152_2009_template", 40),
                                      ("heudiconv_crlab", 15), ("dipy_piesno", 5), ("colin27", 60))]
    train = np.stack(others + [source])
    index = np.arange(7)[None, :]
    crowded = np.array([[0.92, 0.91, 0.91, 0.90, 0.90, 0.89, 0.88]])
    spread = np.array([[0.92, 0.91, 0.91, 0.90, 0.90, 0.80, 0.79]])
    cand = disguised_copy(source)[None]
    config = VerificationConfig(workers=1, top_k=5)
    found = verify_neighbours(cand, crowded, index, lambda rows: train[rows], config)
    assert found.score[0] > 0.85 and found.nearest[0] == 6
    missed = verify_neighbours(cand, spread, index, lambda rows: train[rows], config)
    assert missed.score[0] < 0.85 and missed.nearest[0] != 6


def _nuisance_of(transform, image: np.ndarray, seed: int) -> np.ndarray:
    return transform(torch.from_numpy(image)[None, None], torch.Generator().manual_seed(seed))[0, 0].numpy()


def _geometric_and_gamma():
    from deepssim.metric.augment import Compose, RandomAffine, RandomDihedral, RandomGamma

    return Compose([RandomDihedral(1.0, 1.0), RandomAffine(12.0, 0.06, (0.92, 1.08)), RandomGamma((0.6, 1.5))])


def test_batched_and_per_pair_verification_give_the_same_scores():
    """One batched search over a candidate's references scores the references near the
    best exactly as verifying each pair alone does (the others skip only the last
    refinement, which never lowers a score); one it sets aside scores no better alone than
    the best."""
    from deepssim.audit.verify import PHOTOMETRIC_MARGIN

    source = load("colin27", 90)
    refs = np.stack([load("colin27", 84), source, load("colin27", 88), load("nibabel_example4d", 12),
                     load("icbm152_2009_template", 100)])
    cand = disguised_copy(source)
    batched = verify_candidate(cand, refs)
    alone = [verify_pair(cand, r) for r in refs]
    best = int(np.nanargmax([a.score for a in batched]))
    assert best == 1 and batched[1].score > 0.85
    kept = [j for j, a in enumerate(batched) if a.verified]
    assert 1 in kept and len(kept) < len(refs)
    for j in kept:
        if batched[best].score - batched[j].score <= PHOTOMETRIC_MARGIN:
            assert batched[j].score == pytest.approx(alone[j].score, abs=1e-4)
        else:
            assert alone[j].score >= batched[j].score - 1e-6
    for j in set(range(len(refs))) - set(kept):
        assert np.isnan(batched[j].score) and alone[j].score < batched[best].score


def test_copy_carrying_every_nuisance_at_once_is_found():
    from deepssim.metric.augment import Compose, RandomAffine, RandomBiasField, RandomBlur, RandomDihedral, RandomGamma, RandomNoise

    every = Compose([RandomDihedral(1.0, 1.0), RandomAffine(12.0, 0.06, (0.92, 1.08)), RandomGamma((0.6, 1.5)),
                     RandomBiasField(0.3, 1.0), RandomBlur((0.8,), 1.0), RandomNoise((0.02, 0.02), 1.0)])
    for subject, index in (("colin27", 90), ("heudiconv_crlab", 15), ("nibabel_example4d", 12)):
        ref = load(subject, index)
        cand = _nuisance_of(every, ref, seed=index)
        assert reference_ssim(cand, ref) < 0.6
        assert verify_pair(cand, ref).score > 0.9


def test_patch_edit_scores_within_005_of_its_aligned_ssim():
    """Replaced patches must not pull the photometric fit or the alignment: the score stays
    with the edit's aligned SSIM, as it is and after a flip, turn, rotation and gamma."""
    from deepssim.evaluation.benchmark import similar_edit

    ref, other = load("colin27", 90), load("colin27", 60)
    edited, truth = similar_edit(ref, other, "patch", 0.8, seed=3)
    assert verify_pair(edited, ref).score == pytest.approx(truth, abs=0.05)
    assert verify_pair(_nuisance_of(_geometric_and_gamma(), edited, seed=1), ref).score == pytest.approx(truth, abs=0.05)


def test_neighbouring_slice_is_scored_like_its_aligned_ssim():
    """A slice 3 mm from a registered one (what a generator interpolating a volume makes),
    flipped, turned, rotated and re-contrasted: scored at its aligned SSIM to the
    registered slice, not lifted to a copy by the alignment search."""
    registered, neighbour = load("colin27", 90), load("colin27", 93)
    truth = reference_ssim(neighbour, registered)
    assert 0.6 < truth < 0.85
    cand = _nuisance_of(_geometric_and_gamma(), neighbour, seed=2)
    assert verify_pair(cand, registered).score == pytest.approx(truth, abs=0.05)


def test_unknown_verification_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        VerificationConfig(device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the device machine)")
def test_gpu_verification_matches_the_cpu():
    source = load("colin27", 90)
    refs = np.stack([load("colin27", 86), source, load("nibabel_example4d", 12)])
    cand = disguised_copy(source)
    cpu = verify_candidate(cand, refs, VerificationConfig(device="cpu"))
    gpu = verify_candidate(cand, refs, VerificationConfig(device="cuda"))
    assert [a.verified for a in gpu] == [a.verified for a in cpu]
    for a, b in zip(cpu, gpu):
        if a.verified:
            assert b.score == pytest.approx(a.score, abs=2e-3) and b.dihedral == a.dihedral


def _generated_copy(image: np.ndarray, grid: int, noise: float, seed: int = 0) -> np.ndarray:
    """What a generator working at ``grid`` px that memorized ``image`` samples: the image on
    its grid, with the generator's own noise there, up-sampled back (8-bit, like a PNG)."""
    from deepssim.generative import from_grid, to_grid

    small = to_grid(image, grid) + np.random.default_rng(seed).normal(0, noise, (grid, grid)).astype(np.float32)
    return (np.round(np.clip(from_grid(small, image.shape), 0, 1) * 255) / 255).astype(np.float32)


@pytest.mark.parametrize("grid", [64, 32])
def test_memorized_sample_of_a_low_resolution_generator_scores_its_grid_ssim(grid):
    from deepssim.generative import through_grid

    ref = load("colin27", 90)
    sample = _generated_copy(ref, grid, noise=0.02)
    label = reference_ssim(sample, through_grid(ref, grid))  # the generator-grid label
    assert label > 0.85 and reference_ssim(sample, ref) < label - 0.05  # full resolution under-scores it
    result = verify_pair(sample, ref)
    assert abs(result.score - label) < 0.03, result.transform
    assert result.score > 0.85
    if grid == 32:  # beyond the Gaussian blur levels: only the grid explains it
        assert "grid" in result.transform
        assert verify_pair(sample, ref, VerificationConfig(grid_factors=())).score < label - 0.05


def test_full_resolution_candidates_are_never_compared_through_a_coarser_grid():
    from scipy.ndimage import gaussian_filter

    from deepssim.audit.verify import _band_limited_factors

    refs = torch.tensor(np.stack([load("colin27", i) for i in (60, 90, 120)]))[:, None]
    rng = np.random.default_rng(0)
    blurred_noisy = gaussian_filter(load("colin27", 90), 1.1) + rng.normal(0, 0.03, (128, 128))
    config = VerificationConfig()
    for full_resolution in (load("colin27", 91), load("colin27", 30),
                            np.clip(blurred_noisy, 0, 1).astype(np.float32)):
        assert _band_limited_factors(torch.tensor(full_resolution)[None, None], refs, config) == ()
    sample = torch.tensor(_generated_copy(load("colin27", 90), 32, noise=0.02))[None, None]
    assert 4.0 in _band_limited_factors(sample, refs, config)


def test_the_blur_a_near_copy_shares_with_its_training_image_is_discounted_a_copys_is_not():
    """Blurring the training image to match a blurred candidate compares two images that
    share that blur, which lifts any pair that is not a copy: the discount lowers blurred
    neighbouring slices towards their aligned SSIM (never below it by more than 0.05) and
    leaves a blurred copy's score where it was."""
    from dataclasses import replace
    from scipy.ndimage import gaussian_filter

    config = VerificationConfig()
    raw = replace(config, discount_common_blur=False)
    for subject, slice_, neighbour in (("colin27", 90, 93), ("colin27", 100, 103), ("heudiconv_crlab", 15, 17)):
        registered, nearby = load(subject, slice_), load(subject, neighbour)
        truth = reference_ssim(nearby, registered)
        cand = np.clip(gaussian_filter(nearby, 0.8), 0, 1).astype(np.float32)
        discounted, undiscounted = verify_pair(cand, registered, config), verify_pair(cand, registered, raw)
        assert truth - 0.05 < discounted.score < undiscounted.score, subject
        copy = np.clip(gaussian_filter(registered, 1.1), 0, 1).astype(np.float32)
        assert verify_pair(copy, registered, config).score == pytest.approx(
            verify_pair(copy, registered, raw).score, abs=1e-6)
        assert verify_pair(copy, registered, config).score > 0.99
