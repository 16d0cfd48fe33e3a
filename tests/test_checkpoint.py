"""Checkpoints: round trip, integrity refusal, and the shipped default model's behaviour."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepssim.metric.checkpoint import (DEFAULT_MODEL, FORMAT_VERSION, CheckpointError, file_sha256, load_checkpoint,
                                 read_meta, save_checkpoint, sidecar_path)
from deepssim.config import EncoderConfig
from deepssim.metric.model import DeepSSIMEncoder, with_canonical_flips
from realdata import load_slice as load

SMALL = EncoderConfig(input_size=64, embedding_dim=32, widths=(8, 16, 16, 32))


@pytest.fixture()
def saved(tmp_path) -> tuple[DeepSSIMEncoder, Path]:
    torch.manual_seed(0)
    model = DeepSSIMEncoder(SMALL).eval()
    path = tmp_path / "m" / "model.pt"
    save_checkpoint(model, path, training={"note": "unit test"}, metrics={"mae": 0.1})
    return model, path


def test_round_trip_gives_identical_embeddings(saved):
    model, path = saved
    x = torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert meta.encoder == SMALL
    assert meta.sha256 == file_sha256(path) and meta.model_id == f"deepssim-{meta.sha256[:16]}"
    assert meta.training == {"note": "unit test"} and meta.metrics == {"mae": 0.1}
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    side = json.loads(sidecar_path(path).read_text())
    assert side["model_id"] == meta.model_id and side["format_version"] == FORMAT_VERSION
    assert not list(path.parent.glob("*.tmp"))  # atomic writes leave no temp files
    again = save_checkpoint(loaded, path.parent / "again.pt")
    assert again.model_id == meta.model_id  # the same weights are the same model


def test_flipped_byte_is_refused_as_integrity_failure(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)


def test_swapped_weights_are_refused(saved, tmp_path):
    _, path = saved
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_checkpoint(DeepSSIMEncoder(SMALL), other)
    path.write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)


def test_missing_or_bad_files_are_refused(saved, tmp_path):
    _, path = saved
    side = sidecar_path(path)
    good = side.read_text()
    side.write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path)
    side.write_text(json.dumps({**json.loads(good), "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)
    side.unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    assert issubclass(CheckpointError, ValueError)


@pytest.fixture(scope="module")
def default_model():
    model, meta = load_checkpoint(DEFAULT_MODEL)
    return model, meta


def score(model, a: np.ndarray, b: np.ndarray) -> float:
    x = torch.tensor(np.stack([a, b]))[:, None]
    with torch.inference_mode():
        e = model(x)
    return float(e[0] @ e[1])


def test_shipped_model_metadata(default_model):
    _, meta = default_model
    assert read_meta(DEFAULT_MODEL).sha256 == meta.sha256 == file_sha256(DEFAULT_MODEL)
    assert meta.encoder.input_size == 128 and meta.encoder.embedding_dim == 256
    held = set(meta.training["validation_subjects"])
    assert {"nibabel_anatomical", "heudiconv_crlab", "prad_ct_lung2"} <= held
    assert "copy_rate_gt_0.85" in meta.metrics and "mae_augmented" in meta.metrics


@pytest.mark.parametrize("subject,index", [("colin27", 90), ("nibabel_anatomical", 12), ("heudiconv_crlab", 15)])
def test_shipped_model_flipped_copy_scores_as_duplicate(default_model, subject, index):
    model, _ = default_model
    image = load(subject, index)
    other = load("icbm152_2009_template" if subject != "icbm152_2009_template" else "colin27", 40)
    flipped = np.ascontiguousarray(np.fliplr(image))
    copy_score = score(model, image, flipped)
    different = score(model, image, other)
    assert score(model, image, image) == pytest.approx(1.0, abs=1e-5)
    assert copy_score > 0.85, copy_score
    assert different < copy_score, (different, copy_score)
    assert different < 0.85, different


def test_canonical_flips_are_part_of_the_model_identity(tmp_path):
    """The same weights with canonical flips on are another model (another sha256), and a
    sidecar that disagrees with its weights on it is refused."""
    torch.manual_seed(0)
    plain = DeepSSIMEncoder(SMALL)
    canonical = with_canonical_flips(plain)
    assert torch.equal(canonical.backbone.fc.weight, plain.backbone.fc.weight)
    meta_plain = save_checkpoint(plain, tmp_path / "plain.pt")
    meta_canonical = save_checkpoint(canonical, tmp_path / "canonical.pt")
    assert meta_plain.model_id != meta_canonical.model_id
    loaded, meta = load_checkpoint(tmp_path / "canonical.pt")
    assert meta.encoder.canonical_flips and not read_meta(tmp_path / "plain.pt").encoder.canonical_flips

    side = sidecar_path(tmp_path / "plain.pt")
    record = json.loads(side.read_text())
    record["encoder"]["canonical_flips"] = True  # sidecar edited, weights not
    side.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "plain.pt")
