"""The reference SSIM (the training target) against scikit-image, and its torch port."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from deepssim.metric.ssim import reference_ssim, ssim_targets, ssim_torch, zscore

from realdata import load_slice as load


def skimage_definition(a: np.ndarray, b: np.ndarray) -> float:
    """The DeepSSIM reference definition, written out independently of the library."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    za, zb = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    return float(structural_similarity(za, zb, data_range=za.max() - za.min()))


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Known real pairs: neighbouring slices, distant slices, other subjects, a template."""
    c90, c95, c40 = load("colin27", 90), load("colin27", 95), load("colin27", 40)
    other = load("nibabel_example4d", 12)
    template = load("icbm152_2009_template", 60)
    epi = load("heudiconv_ke6hL9Lm", 20)
    return [(c90, c95), (c90, c40), (c90, other), (template, c90), (epi, other), (c95, template)]


def test_reference_ssim_equals_scikit_image_on_real_pairs(pairs):
    values = []
    for a, b in pairs:
        got = reference_ssim(a, b)
        assert got == pytest.approx(skimage_definition(a, b), abs=1e-12)
        values.append(got)
    # the pairs are not degenerate: they cover high, mid and low similarity
    assert max(values) > 0.55 and min(values) < 0.35


def test_reference_ssim_identity_contrast_invariance_and_errors(pairs):
    a, b = pairs[0]
    assert reference_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # z-scoring makes a linear change of contrast irrelevant
    assert reference_ssim(3.0 * a.astype(np.float64) + 7.0, b) == pytest.approx(reference_ssim(a, b), abs=1e-9)
    # data_range comes from the first image only (as in the reference code), so the
    # definition is only nearly symmetric
    assert reference_ssim(a, b) == pytest.approx(reference_ssim(b, a), abs=0.01)
    with pytest.raises(ValueError):
        reference_ssim(a, b[:64])
    with pytest.raises(ValueError):
        reference_ssim(a, np.full_like(a, 0.5))
    with pytest.raises(ValueError):
        zscore(np.zeros((8, 8)))


def test_ssim_targets_serial_and_parallel_equal_scikit_image(pairs):
    a = np.stack([p[0] for p in pairs] * 2)
    b = np.stack([p[1] for p in pairs] * 2)
    expected = np.array([skimage_definition(x, y) for x, y in zip(a, b)])
    serial = ssim_targets(a, b, workers=1)
    parallel = ssim_targets(a, b, workers=2, chunk=3)  # 4 chunks through the process pool
    assert serial.shape == (len(a),) and serial.dtype == np.float64
    np.testing.assert_allclose(serial, expected, atol=1e-12)
    np.testing.assert_array_equal(parallel, serial)
    with pytest.raises(ValueError):
        ssim_targets(a, b[:-1])


def test_ssim_torch_agrees_with_reference(pairs):
    a = torch.tensor(np.stack([p[0] for p in pairs]))
    b = torch.tensor(np.stack([p[1] for p in pairs]))
    ref = np.array([reference_ssim(x, y) for x, y in pairs])
    got64 = ssim_torch(a.double(), b.double())
    assert got64.dtype == torch.float64 and got64.shape == (len(pairs),)
    np.testing.assert_allclose(got64.numpy(), ref, atol=1e-5)
    # (B, 1, H, W) input gives the same values
    np.testing.assert_allclose(ssim_torch(a.double()[:, None], b.double()[:, None]).numpy(), ref, atol=1e-5)
    # float32 (how training labels pairs) loses a little to cancellation in E[x^2] - E[x]^2:
    # measured up to ~3e-5 on these slices, so 1e-5 only holds in float64
    got32 = ssim_torch(a, b)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), ref, atol=1e-4)
