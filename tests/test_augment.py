"""Seeded batched augmentations: reproducible, shape- and range-preserving; structural
edits land in the middle of the SSIM range."""

import numpy as np
import pytest
import torch

from deepssim.metric.augment import (RandomAffine, RandomBiasField, RandomBlur, RandomDihedral, RandomGamma,
                              RandomNoise, blend_edit, elastic_edit, nuisance_augment, patch_edit)
from deepssim.metric.ssim import reference_ssim, ssim_torch
from deepssim.metric.train import copy_transform

from realdata import load_slice as load


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """(6, 1, 128, 128) real slices of four subjects."""
    imgs = [load("colin27", 90), load("colin27", 60), load("nibabel_example4d", 12),
            load("icbm152_2009_template", 60), load("heudiconv_ke6hL9Lm", 20), load("dipy_piesno", 5)]
    return torch.tensor(np.stack(imgs))[:, None]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("make", [nuisance_augment, lambda: nuisance_augment(0.5), copy_transform],
                         ids=["nuisance", "nuisance-0.5", "copy"])
def test_compose_is_seeded_and_keeps_shape_and_range(batch, make):
    aug = make()
    out1 = aug(batch, gen(7))
    out2 = aug(batch, gen(7))
    out3 = aug(batch, gen(8))
    assert out1.shape == batch.shape and out1.dtype == batch.dtype
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    assert float(out1.min()) >= 0.0 and float(out1.max()) <= 1.0
    assert torch.isfinite(out1).all()
    assert not torch.equal(out1, batch)  # it does something
    assert torch.equal(batch, batch.clone())  # and left the input alone (no in-place edits)


@pytest.mark.parametrize("transform", [RandomDihedral(), RandomAffine(), RandomGamma(), RandomBiasField(p=1.0),
                                       RandomBlur(p=1.0), RandomNoise(p=1.0)],
                         ids=lambda t: type(t).__name__)
def test_each_transform_is_seeded_and_keeps_shape(batch, transform):
    before = batch.clone()
    out1, out2, out3 = transform(batch, gen(1)), transform(batch, gen(1)), transform(batch, gen(2))
    assert out1.shape == batch.shape
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    assert torch.equal(batch, before)


def test_dihedral_and_gamma_are_exact(batch):
    both = RandomDihedral(p_flip=1.0, p_turn=0.0)(batch, gen(0))
    assert torch.equal(both, batch.flip(2).flip(3))
    none = RandomDihedral(p_flip=0.0, p_turn=0.0)(batch, gen(0))
    assert torch.equal(none, batch)
    g = RandomGamma((0.5, 0.5))(batch, gen(0))
    torch.testing.assert_close(g, batch.sqrt())


def test_nuisance_copies_keep_structure_but_move_pixels(batch):
    """An augmented copy has a low *raw* SSIM to its source: pixels move, which is why
    the model, not pixel SSIM, must recognise it."""
    out = nuisance_augment()(batch, gen(3))
    raw = ssim_torch(batch, out)
    assert float(raw.mean()) < 0.8


def test_structural_edits_give_mid_range_ssim(batch):
    """Moderate edits land in the middle of the SSIM range (the 'similar' band the
    training pairs need), and stronger edits lower SSIM."""
    other = batch.roll(1, 0)
    n = len(batch)
    edits = {
        "elastic": lambda s: elastic_edit(batch, torch.full((n,), s), gen(4)),
        "blend": lambda s: blend_edit(batch, other, torch.full((n,), s)),
        "patch": lambda s: patch_edit(batch, other, torch.full((n,), s), gen(4)),
    }
    levels = {"elastic": (0.01, 0.04, 0.12), "blend": (0.15, 0.4, 0.7), "patch": (0.05, 0.3, 0.6)}
    for name, edit in edits.items():
        lo_s, mid_s, hi_s = levels[name]
        s_mild, s_mid, s_strong = (ssim_torch(batch, edit(s).clamp(0, 1)) for s in (lo_s, mid_s, hi_s))
        for s in (s_mild, s_mid, s_strong):
            assert torch.isfinite(s).all()
        assert 0.2 < float(s_mid.min()) and float(s_mid.max()) < 0.97, (name, s_mid)
        assert 0.35 < float(s_mid.mean()) < 0.85, (name, s_mid)
        assert float(s_mild.mean()) > float(s_mid.mean()) > float(s_strong.mean()), name
    # edits are seeded too
    assert torch.equal(elastic_edit(batch, torch.full((n,), 0.05), gen(9)),
                       elastic_edit(batch, torch.full((n,), 0.05), gen(9)))
    assert not torch.equal(patch_edit(batch, other, torch.full((n,), 0.3), gen(9)),
                           patch_edit(batch, other, torch.full((n,), 0.3), gen(10)))


def test_blend_edit_is_exact(batch):
    other = batch.roll(1, 0)
    alpha = torch.linspace(0, 1, len(batch))
    out = blend_edit(batch, other, alpha)
    torch.testing.assert_close(out[0], batch[0])
    torch.testing.assert_close(out[-1], other[-1])
    assert reference_ssim(out[0, 0].numpy(), batch[0, 0].numpy()) == pytest.approx(1.0)


def test_canonical_flips_map_every_mirror_image_to_one_image():
    from deepssim.config import EncoderConfig
    from deepssim.metric.model import DeepSSIMEncoder, canonical_flips, third_moment

    image = torch.tensor(load("colin27", 90), dtype=torch.float32)[None, None]
    mirrors = torch.cat([image, image.flip(-1), image.flip(-2), image.flip(-1).flip(-2)])
    canonical = canonical_flips(mirrors)
    assert all(torch.equal(canonical[0], c) for c in canonical[1:])
    # a shift does not change the decision: the moment is taken about the centre of mass
    shifted = torch.nn.functional.pad(image, (0, 9, 6, 0))[..., :128, 9:]
    for axis in (-2, -1):  # projections on x (sum over rows), then on y
        profiles = [third_moment(x[0, 0].sum(axis)[None]) for x in (image, shifted)]
        assert torch.sign(profiles[0]) == torch.sign(profiles[1]) != 0
    torch.manual_seed(0)
    small = dict(input_size=128, embedding_dim=16, widths=(8, 8, 16, 16))
    encoder = DeepSSIMEncoder(EncoderConfig(**small, canonical_flips=True)).eval()
    without = DeepSSIMEncoder(EncoderConfig(**small)).eval()
    without.load_state_dict({k: v for k, v in encoder.state_dict().items() if k != "canonical_flips"})
    with torch.no_grad():
        emb, emb_without = encoder(mirrors), without(mirrors)
    assert torch.allclose(emb, emb[:1].expand_as(emb), atol=1e-6)
    assert not torch.allclose(emb_without[0], emb_without[1], atol=1e-3)  # not so without it
