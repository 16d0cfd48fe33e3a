"""Threshold calibration on synthetic score distributions."""
import numpy as np
import pytest

from deepssim.evaluation.calibrate import calibrate_from_cohort
from deepssim.evaluation.scoring import calibrate_from_benchmark


def synthetic(seed=0, n=300):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0.95, 0.04, n), rng.normal(0.72, 0.06, n), rng.normal(0.4, 0.1, n)])
    labels = np.array(["duplicate"] * n + ["similar"] * n + ["different"] * n)
    return np.clip(scores, -1, 1), labels


@pytest.mark.parametrize("floor", [0.9, 0.98, 0.995])
def test_benchmark_thresholds_ordered_and_respect_recall_floor(floor):
    scores, labels = synthetic()
    t = calibrate_from_benchmark(scores, labels, min_duplicate_recall=floor)
    assert -1 <= t.similar < t.duplicate <= 1
    assert np.mean(scores[labels == "duplicate"] > t.duplicate) >= floor
    assert 0.55 < t.similar < 0.7 and "macro F1" in t.source


def test_benchmark_floor_lowers_duplicate_cut():
    scores, labels = synthetic(1)
    loose = calibrate_from_benchmark(scores, labels, min_duplicate_recall=0.5)
    strict = calibrate_from_benchmark(scores, labels, min_duplicate_recall=0.999)
    assert strict.duplicate <= loose.duplicate


def test_cohort_thresholds_sit_above_non_member_scores():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    subjects = np.repeat(np.arange(20), 10)
    emb = centres[subjects] + 0.3 * rng.normal(size=(200, 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    t = calibrate_from_cohort(emb.astype(np.float32), subjects, holdout_fraction=0.3)
    assert -1 <= t.similar < t.duplicate <= 1
    assert "held-out subjects" in t.source
    # the same-subject neighbours score far above the cross-subject calibration
    same = np.sum(emb[0] * emb[1])
    assert same > t.similar


def test_calibration_is_recorded_and_used_by_an_audit(tmp_path):
    """calibrate -> Store.record_calibration -> `audit --calibrated` settings carry the
    thresholds and their source (what summary.json['thresholds'] records)."""
    from deepssim.evaluation.calibrate import latest_thresholds
    from deepssim.config import AuditSettings
    from deepssim.store.database import Store
    from flows.cli import _calibrated_thresholds, _settings
    from flows.common import summary_skeleton

    scores, labels = synthetic(2)
    t = calibrate_from_benchmark(scores, labels, min_duplicate_recall=0.98, name="bench-x")
    db = tmp_path / "gate.duckdb"
    with Store(db) as store:
        assert latest_thresholds(store, "brain") is None
        gid = store.record_calibration(t, None, None, {"route": "benchmark"})
        cohort_t = calibrate_from_benchmark(scores, labels, min_duplicate_recall=0.5, name="bench-y")
        cid = store.record_calibration(cohort_t, "brain", None, {"route": "benchmark"})
        got, got_id = latest_thresholds(store, "brain")
        assert got_id == cid and got.duplicate == pytest.approx(cohort_t.duplicate)
        other, other_id = latest_thresholds(store, "spine")  # no cohort calibration: the global one
        assert other_id == gid and "global" in other.source
    similar, duplicate, source = _calibrated_thresholds(db, "spine", 5.0)
    assert (similar, duplicate) == pytest.approx((t.similar, t.duplicate))
    settings = AuditSettings.from_record(_settings(similar, duplicate, 0, None, True, False, 5, "cpu", 8, 5.0,
                                                   thresholds_source=source))
    assert settings.thresholds.duplicate == pytest.approx(t.duplicate)
    summary = summary_skeleton(settings, "spine", "/x", "run-1")
    assert summary["thresholds"]["source"].startswith(f"calibration {gid}")
    assert "bench-x" in summary["thresholds"]["source"]
