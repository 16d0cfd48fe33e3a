"""Training pairs (balanced, subject-correct) and a few real training steps on CPU."""

import pytest
import torch

from deepssim.metric.augment import nuisance_augment
from deepssim.config import EncoderConfig
from deepssim.metric.model import DeepSSIMEncoder, cosine_scores
from deepssim.metric.pairs import ImagePool, PairMix, PairSampler

from realdata import SHARED_DATA as DATA, require_shared_data

TRAIN_SUBJECTS = {"colin27", "heudiconv_ke6hL9Lm", "nibabel_example4d", "dipy_piesno", "dipy_aniso_vox"}
VAL_SUBJECTS = {"icbm152_2009_template", "heudiconv_crlab", "nibabel_anatomical"}


@pytest.fixture(scope="module")
def pool() -> ImagePool:
    from deepssim.metric.trainingdata import as_pool, read_slice_folder

    require_shared_data()  # skips only a clone without ../shared/data; a missing manifest fails
    return as_pool(read_slice_folder(DATA))


def subjects_of(pool: ImagePool, images: torch.Tensor) -> list[set[int]]:
    """Map each image back to the subject(s) of the pool rows it was copied from."""
    index: dict[bytes, set[int]] = {}
    for img, subj in zip(pool.images, pool.subject.tolist()):
        index.setdefault(img.numpy().tobytes(), set()).add(subj)
    return [index[img.numpy().tobytes()] for img in images]


def test_pool_is_sorted_and_labelled(pool):
    assert pool.images.shape[1:] == (1, 128, 128)
    assert float(pool.images.min()) >= 0 and float(pool.images.max()) <= 1
    assert len(pool.subject) == len(pool.volume) == len(pool.position) == len(pool)
    # neighbours are adjacent rows: inside a volume, positions increase
    same_vol = pool.volume[1:] == pool.volume[:-1]
    assert bool((pool.position[1:][same_vol] > pool.position[:-1][same_vol]).all())
    sub = pool.select_subjects({"colin27"})
    assert 0 < len(sub) < len(pool) and set(sub.subject.tolist()) == {pool.subject_names.index("colin27")}


def test_sampler_targets_span_range_with_flat_histogram(pool):
    sampler = PairSampler(pool, seed=0)
    a, b, target = sampler.draw(300)
    assert a.shape == b.shape == (300, 1, 128, 128) and target.shape == (300,)
    assert torch.isfinite(target).all()
    assert float(target.min()) < 0.1 and float(target.max()) > 0.99
    # labels are the aligned SSIM of the returned pair
    from deepssim.metric.ssim import reference_ssim

    for i in range(0, 300, 60):
        assert float(target[i]) == pytest.approx(reference_ssim(a[i, 0].numpy(), b[i, 0].numpy()), abs=1e-4)
    # roughly flat over the populated range: no bin of width 0.1 in [0.1, 0.9] holds
    # fewer than half or more than twice the median; the top bin is boosted (copies)
    hist = torch.histc(target, 12, -0.2, 1.0)
    middle = hist[3:11]
    med = float(middle.median())
    assert float(middle.min()) >= 0.5 * med and float(middle.max()) <= 2.0 * med, hist.tolist()
    assert float(hist[-1]) >= 1.2 * med, hist.tolist()
    # flatter than the unbalanced draw it came from
    _, _, raw, _ = PairSampler(pool, seed=0).draw_raw(300)
    raw_mid = torch.histc(raw, 12, -0.2, 1.0)[3:11]
    assert float(middle.std() / middle.mean()) < float(raw_mid.std() / raw_mid.mean())


def test_sampler_is_seeded(pool):
    t1 = PairSampler(pool, seed=5).draw(40)[2]
    t2 = PairSampler(pool, seed=5).draw(40)[2]
    t3 = PairSampler(pool, seed=6).draw(40)[2]
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)


@pytest.mark.parametrize("kind", ["same_subject", "other_subject", "neighbour"])
def test_sampler_pair_kinds_respect_subjects(pool, kind):
    mix = PairMix(**{k: (1.0 if k == kind else 0.0) for k in PairSampler.KINDS})
    a, b, target, kinds = PairSampler(pool, mix, seed=3).draw_raw(120)
    assert len(a) > 100 and bool((kinds == PairSampler.KINDS.index(kind)).all())
    sa, sb = subjects_of(pool, a), subjects_of(pool, b)
    if kind == "other_subject":
        assert all(not (x & y) for x, y in zip(sa, sb))
        assert float(target.mean()) < 0.5
    else:  # same subject, never across subjects
        assert all(x & y for x, y in zip(sa, sb))
        assert float(target.mean()) > 0.3


def fixed_batch_loss(model: DeepSSIMEncoder, a, b, target, seed: int = 11) -> float:
    gen = torch.Generator().manual_seed(seed)
    aug = nuisance_augment()
    model.eval()
    with torch.no_grad():
        score = cosine_scores(model(aug(a, gen)), model(aug(b, gen)))
    return float(torch.nn.functional.mse_loss(score, target))


def test_few_training_steps_reduce_loss(pool):
    from deepssim.metric.train import TrainConfig, train_encoder

    train_pool = pool.select_subjects(TRAIN_SUBJECTS)
    val_pool = pool.select_subjects(VAL_SUBJECTS)
    encoder = EncoderConfig()
    torch.manual_seed(0)
    init = DeepSSIMEncoder(encoder)
    a, b, target = PairSampler(train_pool, seed=99).draw(64)
    before = fixed_batch_loss(init, a, b, target)
    config = TrainConfig(steps=30, batch_size=16, lr=2e-3, warmup_steps=5, eval_every=30, eval_pairs=48,
                         device="cpu", seed=0)
    logs: list[str] = []
    result = train_encoder(train_pool, val_pool, config, encoder, init_state=init.state_dict(), log=logs.append)
    after = fixed_batch_loss(result.model, a, b, target)
    assert result.steps == 30 and result.best_step == 30
    assert len(result.history) == 1 and any("step 30/30" in line for line in logs)
    from deepssim.metric.embed import resolve_precision

    native = resolve_precision("auto", torch.device("cpu")) == torch.bfloat16
    assert logs[0] == f"training arithmetic on cpu: {'bfloat16 autocast' if native else 'float32'}"
    for key in ("mae_aligned", "mae_augmented", "spearman_augmented", "copy_rate_gt_0.85",
                "different_rate_le_0.60", "mae_augmented_by_band"):
        assert key in result.metrics
    assert result.config["train"]["steps"] == 30
    # the loss on a fixed, never-trained-on batch falls clearly
    print(f"fixed-batch loss before {before:.4f} after {after:.4f}")
    assert after < 0.7 * before, (before, after)
    assert not result.model.training
    emb = result.model(a[:4])
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


def test_the_time_budget_stops_training_before_the_schedule_is_fitted_and_progress_is_logged(pool):
    """A budget spent before step 80 (a busy machine) still stops training, and progress
    lines come at least every ``heartbeat_s`` between evaluations."""
    from deepssim.metric.train import TrainConfig, train_encoder

    config = TrainConfig(steps=10_000, batch_size=8, warmup_steps=5, eval_every=5_000, eval_pairs=16,
                         device="cpu", seed=0, time_budget_s=1.0, heartbeat_s=0.0)
    logs: list[str] = []
    result = train_encoder(pool.select_subjects(TRAIN_SUBJECTS), pool.select_subjects(VAL_SUBJECTS), config,
                   EncoderConfig(), log=logs.append)
    assert result.steps < 80, result.steps
    assert any(line.startswith("time budget 1s spent at step") for line in logs), logs
    beats = [line for line in logs if "(training; next evaluation at step" in line]
    assert len(beats) >= result.steps - 2 and beats[0].startswith("step 1/10000")
    assert result.history[-1]["step"] == result.steps  # the stopped run is still evaluated
