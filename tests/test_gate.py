"""Labels at the threshold boundaries, policy variants and volume rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepssim.config import GatePolicy, Thresholds
from deepssim.audit.gate import decide, label_counts, label_scores, volume_table


def _verdicts(labels: list[str], volume_ids: list | None = None, scores: list | None = None) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({"image_id": [f"c{i:02d}" for i in range(n)], "label": labels,
                         "score": scores if scores is not None else np.linspace(0.9, 0.1, n),
                         "nearest_id": [f"t{i:02d}" for i in range(n)],
                         "volume_id": volume_ids if volume_ids is not None else [None] * n})


def test_labels_at_default_boundaries():
    up = lambda x: np.nextafter(x, 2.0)  # noqa: E731 - the next float above x
    scores = [1.0, up(0.85), 0.85, up(0.60), 0.60, 0.0, -1.0, np.nan]
    expected = ["duplicate", "duplicate", "similar", "similar", "different", "different", "different",
                "duplicate"]
    assert label_scores(np.array(scores), Thresholds()).tolist() == expected


def test_labels_follow_custom_thresholds():
    t = Thresholds(similar=0.3, duplicate=0.5, source="test")
    assert label_scores([0.51, 0.5, 0.31, 0.3], t).tolist() == ["duplicate", "similar", "similar", "different"]


@pytest.mark.parametrize("similar,duplicate", [(0.85, 0.85), (0.9, 0.6), (-1.5, 0.5), (0.5, 1.2)])
def test_inconsistent_thresholds_are_rejected(similar, duplicate):
    with pytest.raises(ValueError):
        Thresholds(similar=similar, duplicate=duplicate)


def test_default_policy_fails_on_one_duplicate_and_reports_similar():
    failed = decide(_verdicts(["different", "duplicate", "similar"]), GatePolicy())
    assert failed.verdict == "fail" and not failed.passed
    assert "1 duplicate" in failed.reasons[0]
    assert failed.counts == {"duplicate": 1, "similar": 1, "different": 1, "quarantined": 0}
    passed = decide(_verdicts(["similar", "similar", "different"]), GatePolicy())
    assert passed.passed and passed.reasons == []


def test_max_duplicates_is_inclusive():
    policy = GatePolicy(max_duplicates=2)
    assert decide(_verdicts(["duplicate"] * 2 + ["different"]), policy).passed
    assert not decide(_verdicts(["duplicate"] * 3), policy).passed


def test_similar_fraction_policy():
    policy = GatePolicy(max_similar_fraction=0.25)
    assert decide(_verdicts(["similar", "different", "different", "different"]), policy).passed
    failed = decide(_verdicts(["similar", "similar", "different", "different"]), policy)
    assert not failed.passed and "50.0% of candidates are similar" in failed.reasons[0]


def test_quarantined_files_fail_closed_unless_allowed():
    clean = _verdicts(["different"])
    failed = decide(clean, GatePolicy(), quarantined=2)
    assert not failed.passed and failed.counts["quarantined"] == 2
    assert decide(clean, GatePolicy(fail_on_quarantined=False), quarantined=2).passed


def test_volume_duplicate_policy():
    verdicts = _verdicts(["duplicate", "different", "different"], volume_ids=["v1", "v1", "v2"])
    lenient = GatePolicy(max_duplicates=5, fail_on_volume_duplicate=False)
    assert decide(verdicts, lenient).passed
    strict = decide(verdicts, GatePolicy(max_duplicates=5))
    assert not strict.passed and strict.volume_counts == {"duplicate": 1, "similar": 0, "different": 1}


def test_volume_table_worst_label_counts_and_best_match():
    verdicts = _verdicts(["different", "similar", "duplicate", "similar", "different", "duplicate"],
                         volume_ids=["b", "b", "b", "a", "a", None],
                         scores=[0.2, 0.7, 0.95, 0.65, 0.3, 0.99])
    table = volume_table(verdicts).set_index("volume_id")
    assert list(table.index) == ["a", "b"]  # the 2D image (no volume) has no row
    assert table.loc["b", "worst_label"] == "duplicate" and table.loc["a", "worst_label"] == "similar"
    assert table.loc["b", "slices"] == 3 and table.loc["b", "duplicate_slices"] == 1
    assert table.loc["b", "similar_slices"] == 1 and table.loc["a", "duplicate_slices"] == 0
    assert table.loc["b", "best_image_id"] == "c02" and table.loc["b", "best_match"] == "t02"
    assert table.loc["a", "best_score"] == pytest.approx(0.65)


def test_volume_table_is_empty_without_volumes():
    assert volume_table(_verdicts(["duplicate", "different"])).empty


def test_label_counts_include_every_label():
    assert label_counts(["similar", "similar"]) == {"duplicate": 0, "similar": 2, "different": 0}
