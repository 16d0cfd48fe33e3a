"""The researcher's three lines: ``import deepssim; m = deepssim.load_default_model();
m.score(a, b)`` on paths (PNG, DICOM) and numpy arrays."""
import numpy as np
import pytest

import deepssim

from realdata import slice_path


@pytest.fixture(scope="module")
def model():
    return deepssim.load_default_model(device="cpu")


def test_three_lines_on_paths(model, tmp_path):
    a = slice_path("colin27", 90)
    b = slice_path("nibabel_example4d", 12)
    # a flipped copy written to disk as another PNG
    from PIL import Image

    flipped = tmp_path / "flipped.png"
    Image.fromarray(np.fliplr(np.asarray(Image.open(a).convert("L")))).save(flipped)
    same = model.score(a, str(a))
    copy = model.score(a, flipped)
    other = model.score(a, b)
    assert isinstance(same, float) and same == pytest.approx(1.0, abs=1e-5)
    assert copy > 0.85 and other < copy
    assert model.model_id.startswith("deepssim-") and model.input_size == 128


def test_score_on_arrays_matches_paths(model):
    a, b = slice_path("colin27", 90), slice_path("colin27", 96)
    ia, ib = deepssim.load_image(a), deepssim.load_image(b)
    assert ia.shape == (128, 128) and ia.dtype == np.float32 and 0 <= ia.min() and ia.max() <= 1
    assert model.score(ia, ib) == pytest.approx(model.score(a, b), abs=1e-6)
    # raw arrays of any dtype / size are windowed and resized like the readers do
    from PIL import Image

    raw = np.asarray(Image.open(a).convert("L")).astype(np.uint16) * 40
    big = np.kron(raw, np.ones((2, 2), dtype=raw.dtype))  # 256x256
    assert model.score(big, ia) > 0.9
    assert model.score(ia, ib) == pytest.approx(model.score(ib, ia), abs=1e-6)


def test_dicom_paths_and_embed(model):
    import pydicom.data as pydicom_data  # a dependency: a broken install must fail, not skip
    ct = pydicom_data.get_testdata_file("CT_small.dcm")
    mr = pydicom_data.get_testdata_file("MR_small.dcm")
    img = deepssim.load_image(ct)
    assert img.shape == (128, 128)
    emb = model.embed([ct, mr, np.fliplr(img)])
    assert emb.shape == (3, 256) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert float(emb[0] @ emb[2]) > 0.85  # flipped CT slice still a copy
    assert float(emb[0] @ emb[1]) < float(emb[0] @ emb[2])
    # an (N, S, S) batch goes straight to the encoder
    batch = model.embed(np.stack([img, img[::-1]]))
    np.testing.assert_allclose(batch[0], emb[0], atol=1e-5)


def test_functional_form_and_bad_input(model, tmp_path):
    a = slice_path("colin27", 90)
    assert deepssim.deepssim_score(a, a, model=model) == pytest.approx(1.0, abs=1e-5)
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError):
        model.score(a, bad)


def test_precision_resolution(monkeypatch):
    import torch

    from deepssim.metric import embed

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert embed.resolve_precision("float32", cuda) == torch.float32
    assert embed.resolve_precision("bfloat16", cpu) == torch.bfloat16
    assert embed.resolve_precision("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(embed, "cpu_has_native_bfloat16", lambda: False)
    assert embed.resolve_precision("auto", cpu) == torch.float32  # emulated bf16 would be slower
    monkeypatch.setattr(embed, "cpu_has_native_bfloat16", lambda: True)
    assert embed.resolve_precision("auto", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        embed.resolve_precision("float16", cpu)


def test_bfloat16_scores_agree_with_float32_on_real_slices():
    """bfloat16 is a speed setting: on real slices (same subject, other subjects, a flipped
    copy) it must rank and score pairs as float32 does, to a few thousandths."""
    from deepssim.api import load_default_model

    paths = [slice_path(s, i) for s, i in (("colin27", 90), ("colin27", 96), ("nibabel_anatomical", 12),
                                            ("heudiconv_crlab", 15), ("icbm152_2009_template", 40))]
    images = np.stack([deepssim.load_image(p) for p in paths] + [np.ascontiguousarray(np.fliplr(deepssim.load_image(paths[0])))])
    emb32 = load_default_model(device="cpu", precision="float32").embed(images)
    emb16 = load_default_model(device="cpu", precision="bfloat16").embed(images)
    assert emb16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb16, axis=1), 1.0, atol=1e-5)
    cos32, cos16 = emb32 @ emb32.T, emb16 @ emb16.T
    assert not np.array_equal(emb32, emb16)  # the setting really changed the arithmetic
    assert np.abs(cos32 - cos16).max() < 0.01
    assert cos16[0, 5] > 0.85  # the flipped copy is still a duplicate
