"""The case study: the generator's grid, a diffusion generator's training and sampling, the
labels and tables the report is built on, and the `deepssim casestudy` command end to end
on a tiny generator."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO
from realdata import require_shared_data, slice_path

from deepssim.config import Thresholds
from deepssim.evaluation.casestudy import SampleFilter, gate_agreement, grid_labels, memorization_by_copies
from deepssim.generative import (GeneratorConfig, MemorizationCohort, build_unet, generator_loss, load_generator,
                                 memorization_cohort, read_cohort_images, sample_images, save_generator,
                                 through_grid, to_grid, train_generator)
from deepssim.generative.diffusion import TrainedGenerator, _scheduler

TINY = GeneratorConfig(size=16, channels=(8, 16, 16), norm_num_groups=8, num_head_channels=16, sample_steps=5)


def _slices(*indices: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(slice_path("colin27", i)).convert("L"), np.float32) / 255 for i in indices])


def test_a_training_image_through_the_generators_grid_labels_as_one():
    training = _slices(40, 80, 120)
    copy = through_grid(training[1], 64)
    labels = grid_labels(copy[None], training, grid=64, thresholds=Thresholds())
    row = labels.iloc[0]
    assert row["nearest"] == 1
    assert row["label_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert row["label"] == "duplicate"
    # the same perfect copy against the full-resolution image: what a label without the grid would say
    assert row["raw_ssim"] < 0.97


def test_grid_labels_other_subjects_are_not_duplicates():
    training = _slices(40, 80, 120)
    from PIL import Image

    other = np.asarray(Image.open(slice_path("nibabel_anatomical", 12)).convert("L"), np.float32) / 255
    labels = grid_labels(through_grid(other, 64)[None], training, grid=64, thresholds=Thresholds())
    assert labels.iloc[0]["label"] != "duplicate"
    assert labels.iloc[0]["label_ssim"] < 0.85


def test_to_grid_averages_and_from_grid_restores_the_shape():
    image = np.zeros((128, 128), np.float32)
    image[:, 64:] = 1.0
    small = to_grid(image, 64)
    assert small.shape == (64, 64)
    assert small[:, :31].max() < 0.01 and small[:, 33:].min() > 0.99
    assert through_grid(image, 64).shape == (128, 128)


def test_sampling_is_deterministic_for_a_seed():
    torch.manual_seed(0)
    generator = TrainedGenerator(build_unet(TINY).eval(), TINY)
    first = sample_images(generator, 3, seed=5, batch_size=3)
    again = sample_images(generator, 3, seed=5, batch_size=1)  # batching must not change a sample
    other = sample_images(generator, 3, seed=6)
    assert first.shape == (3, 16, 16) and first.min() >= 0 and first.max() <= 1
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert np.abs(first - other).mean() > 0.01


def test_a_few_training_steps_reduce_the_loss():
    images = to_grid(_slices(60, 90)[0], 16)[None].repeat(4, 0)
    images[2:] = to_grid(_slices(90)[0], 16)
    data = torch.from_numpy(images * 2 - 1).unsqueeze(1)
    scheduler = _scheduler(TINY, "ddpm")

    def held_out_loss(unet) -> float:  # the same noise and timesteps before and after
        with torch.no_grad():
            return float(np.mean([generator_loss(unet, scheduler, data, torch.Generator().manual_seed(s)).item()
                                  for s in range(8)]))

    torch.manual_seed(1)
    before = held_out_loss(build_unet(TINY))  # train_generator starts from this initialisation
    trained, history = train_generator(images, TINY, steps=60, batch_size=8, lr=2e-3, ema_decay=0.0, seed=1,
                                       log=lambda line: None, log_every=20)
    assert [h["step"] for h in history] == [20, 40, 60]
    assert held_out_loss(trained.unet) < 0.7 * before


def test_saved_generator_loads_the_same_and_refuses_tampered_weights(tmp_path):
    torch.manual_seed(0)
    generator = TrainedGenerator(build_unet(TINY).eval(), TINY, {"name": "tiny"})
    generator_id = save_generator(generator, tmp_path / "g.pt")
    loaded = load_generator(tmp_path / "g.pt")
    assert loaded.meta["generator_id"] == generator_id and loaded.config == TINY
    np.testing.assert_allclose(sample_images(loaded, 2, seed=1), sample_images(generator, 2, seed=1), atol=2e-2)
    blob = bytearray((tmp_path / "g.pt").read_bytes())
    blob[-100] ^= 0xFF
    (tmp_path / "g.pt").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256"):
        load_generator(tmp_path / "g.pt")


def test_memorization_cohort_duplicates_what_it_says_and_checks_the_pixels(tmp_path):
    data = require_shared_data()
    duplication = {5: 2, 20: 1}
    cohort = memorization_cohort(data, ["colin27", "nibabel_example4d"], duplication, ["colin27"], stride=3, seed=0)
    copies = [im.copies for im in cohort.images]
    assert sorted(c for c in copies if c > 1) == [5, 5, 20]
    assert all(im.subject == "colin27" for im in cohort.images if im.copies > 1)
    assert len(cohort.training_files()) == sum(copies)
    again = memorization_cohort(data, ["colin27", "nibabel_example4d"], duplication, ["colin27"], stride=3, seed=0)
    other = memorization_cohort(data, ["colin27", "nibabel_example4d"], duplication, ["colin27"], stride=3, seed=1)
    assert again == cohort and other.copies_of() != cohort.copies_of()
    assert MemorizationCohort.from_rows(cohort.to_rows()) == cohort
    tampered = MemorizationCohort((cohort.images[0].__class__(cohort.images[0].file, "colin27", 1, "0" * 64),))
    with pytest.raises(ValueError, match="differ"):
        read_cohort_images(data, tampered)


def test_sample_filter_names_why_a_sample_is_unusable():
    rng = np.random.default_rng(0)
    good = rng.uniform(0, 1, (16, 16))
    empty = np.zeros((16, 16))
    empty[0, :3] = 1
    assert SampleFilter().reason(good) == ""
    assert SampleFilter().reason(np.full((16, 16), 0.5)).startswith("flat")
    assert SampleFilter().reason(empty).startswith("near-empty")
    assert SampleFilter().reason(np.full((16, 16), np.nan)) == "not finite"


def test_memorization_table_counts_copies_of_duplicated_images():
    # training images 0-1 once, 2 twenty times; three samples copy image 2, one copies image 0
    labelled = pd.DataFrame({"nearest": [2, 2, 2, 0, 1], "label": ["duplicate"] * 4 + ["similar"]})
    table = memorization_by_copies(labelled, np.array([1, 1, 20])).set_index("copies")
    assert table.loc[20, "duplicate_samples"] == 3 and table.loc[20, "memorized_fraction"] == 1.0
    assert table.loc[1, "memorized_images"] == 1 and table.loc[1, "memorized_fraction"] == 0.5
    assert table.loc[20, "training_share"] == pytest.approx(20 / 22)


def test_gate_agreement_scores_a_planted_miss():
    truth = ["duplicate", "duplicate", "similar", "different"]
    gate = ["duplicate", "similar", "similar", "different"]
    result = gate_agreement(truth, gate, np.array([0.95, 0.90, 0.7, 0.2]), np.array([0.96, 0.84, 0.7, np.nan]))
    assert result["per_class"]["duplicate"]["recall"] == 0.5
    assert result["per_class"]["similar"]["precision"] == 0.5
    assert result["confusion"][2] == [0, 1, 1]
    assert result["score_error"]["n"] == 3  # the NaN gate score is left out
    assert result["score_error"]["mae"] == pytest.approx((0.01 + 0.06 + 0) / 3)


@pytest.mark.slow
@pytest.mark.prefect
def test_casestudy_command_on_a_tiny_generator_writes_the_report_and_table(tmp_path, prefect_harness):
    import os
    import subprocess

    from conftest import OFFLINE_ENV

    data = require_shared_data()
    cohort = memorization_cohort(data, ["nibabel_example4d"], {5: 1}, ["nibabel_example4d"], stride=4, seed=0)
    images = read_cohort_images(data, cohort)
    on_grid = {im.file: to_grid(x, TINY.size) for im, x in zip(cohort.images, images)}
    generator, _ = train_generator(np.stack([on_grid[f] for f in cohort.training_files()]), TINY, steps=10,
                                   batch_size=8, log=lambda line: None)
    generator.meta.update(name="tiny", cohort=cohort.to_rows(), command="tests/test_casestudy.py")
    save_generator(generator, tmp_path / "tiny.pt")
    out = tmp_path / "out"
    linked = tmp_path / "data-link"  # a symlinked data root (CI's ../shared is one) must not quarantine the cohort
    linked.symlink_to(data, target_is_directory=True)
    env = {**os.environ, **OFFLINE_ENV, "PREFECT_API_URL": prefect_harness}
    done = subprocess.run([str(Path(sys.executable).with_name("deepssim")), "casestudy", "--out", str(out),
                           "--generator", str(tmp_path / "tiny.pt"), "--data", str(linked), "--n", "8", "--json"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert set(summary["agreement"]["per_class"]) == {"different", "similar", "duplicate"}
    assert summary["samples"]["drawn"] == 8
    assert summary["control"]["images"] > 10 and summary["control"]["duplicates"] == 0
    joined = pd.read_csv(out / "samples.csv")
    assert len(joined) == summary["samples"]["audited"] + summary["control"]["images"]
    assert set(joined["gate_label"]) <= {"different", "similar", "duplicate"}
    # the label is the reference SSIM to the nearest training image through the grid, recomputed here
    from PIL import Image

    from deepssim.metric.ssim import reference_ssim

    row = joined.iloc[0]
    sample = np.asarray(Image.open(out / "candidates" / row["image_id"]), np.float32) / 255
    seen = through_grid(images[int(row["nearest"])], TINY.size)
    assert reference_ssim(sample, seen) == pytest.approx(row["label_ssim"], abs=1e-6)
    html = (out / "casestudy.html").read_text()
    for heading in ("Memorization by duplication in training", "The gate against the generator-grid labels",
                    "Non-member control"):
        assert heading in html
    assert html.count('<span class="chip chip-duplicate">duplicate</span></td><td class="num">') >= 1


def test_training_continues_a_generator_and_counts_its_steps():
    images = to_grid(_slices(60)[0], 16)[None].repeat(4, 0)
    first, _ = train_generator(images, TINY, steps=4, batch_size=4, log=lambda line: None, log_every=2)
    more, history = train_generator(images, TINY, steps=4, batch_size=4, seed=1, log=lambda line: None,
                                    log_every=2, init=first)
    assert [h["step"] for h in history] == [6, 8] and more.meta["steps_done"] == 8
    start = dict(first.unet.named_parameters())
    assert any(not torch.equal(p, start[name]) for name, p in more.unet.named_parameters())
    with pytest.raises(ValueError, match="config"):
        train_generator(images, GeneratorConfig(size=16, channels=(16, 16, 16), norm_num_groups=8,
                                                num_head_channels=16), steps=1, init=first, log=lambda line: None)
