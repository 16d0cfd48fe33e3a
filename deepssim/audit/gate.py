"""Labels, per-volume rows and the pass/fail decision.

Pure functions over a per-candidate table (cleanlab-style: one row per audited image).
Thresholds and policy always come in as arguments.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from deepssim.config import GatePolicy, Thresholds

LABELS = ("duplicate", "similar", "different")
_RANK = {"duplicate": 0, "similar": 1, "different": 2}


def label_scores(scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """(N,) scores -> (N,) labels: ``> duplicate`` duplicate, ``> similar`` similar, else
    different.  NaN scores are labelled duplicate (fail closed: an unscored image is
    never called different)."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, "different", dtype=object)
    out[s > thresholds.similar] = "similar"
    out[s > thresholds.duplicate] = "duplicate"
    out[np.isnan(s)] = "duplicate"
    return out


def label_counts(labels) -> dict[str, int]:
    values = pd.Series(labels, dtype=object).value_counts()
    return {lab: int(values.get(lab, 0)) for lab in LABELS}


def volume_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per volume (rows whose ``volume_id`` is set): slice count, duplicate and
    similar slice counts, worst label, best score and its match."""
    cols = ["volume_id", "slices", "duplicate_slices", "similar_slices", "worst_label",
            "best_score", "best_image_id", "best_match"]
    if "volume_id" not in verdicts or verdicts["volume_id"].isna().all():
        return pd.DataFrame(columns=cols)
    rows = []
    for vol, g in verdicts.dropna(subset=["volume_id"]).groupby("volume_id", sort=True):
        top = g.sort_values(["score", "image_id"], ascending=[False, True]).iloc[0]
        worst = min(g["label"], key=_RANK.__getitem__)
        rows.append([vol, len(g), int((g["label"] == "duplicate").sum()), int((g["label"] == "similar").sum()),
                     worst, float(top["score"]), top["image_id"], top["nearest_id"]])
    return pd.DataFrame(rows, columns=cols)


@dataclass
class GateDecision:
    """The gate's answer.  ``verdict`` is ``pass`` or ``fail``; ``reasons`` say why."""

    verdict: str
    reasons: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    volume_counts: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def as_dict(self) -> dict:
        return asdict(self)


def decide(verdicts: pd.DataFrame, policy: GatePolicy, volumes: pd.DataFrame | None = None,
           quarantined: int = 0) -> GateDecision:
    """Apply ``policy`` to labelled candidates (column ``label``), their volume rows and
    the number of candidate files/slices that were quarantined."""
    counts = label_counts(verdicts["label"])
    volumes = volumes if volumes is not None else volume_table(verdicts)
    vol_counts = label_counts(volumes["worst_label"]) if len(volumes) else {}
    reasons = []
    if counts["duplicate"] > policy.max_duplicates:
        reasons.append(f"{counts['duplicate']} duplicate candidate(s) (policy allows {policy.max_duplicates})")
    total = max(1, len(verdicts))
    if policy.max_similar_fraction is not None and counts["similar"] / total > policy.max_similar_fraction:
        reasons.append(f"{counts['similar'] / total:.1%} of candidates are similar "
                       f"(policy allows {policy.max_similar_fraction:.1%})")
    if policy.fail_on_volume_duplicate and vol_counts.get("duplicate", 0):
        reasons.append(f"{vol_counts['duplicate']} volume(s) contain duplicate slices")
    if policy.fail_on_quarantined and quarantined:
        reasons.append(f"{quarantined} candidate file(s)/slice(s) could not be audited (quarantined; "
                       f"see quarantine.csv)")
    counts = {**counts, "quarantined": int(quarantined)}
    return GateDecision(verdict="fail" if reasons else "pass", reasons=reasons, counts=counts,
                        volume_counts=vol_counts)
