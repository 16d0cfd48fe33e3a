"""The case-study report: memorization by duplication, sample–training pairs, the gate
against the generator-grid labels, and the non-member control (jinja2; no prefect)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .images import data_uri, png_bytes
from .plots import memorization_png, score_agreement_png
from .report import write_atomically, _environment

PAIRS_SHOWN = 12  # the most memorized samples
DISAGREEMENTS_SHOWN = 8  # samples whose gate label differs from their label


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), np.float32) / 255


def _pair(row: Mapping, candidates: Path, training_files: list[str], grid: int) -> dict:
    from deepssim.generative import through_grid

    train = _read(Path(training_files[int(row["nearest"])]))
    return {"row": dict(row),
            "sample": data_uri(png_bytes(_read(candidates / row["image_id"]))),
            "seen": data_uri(png_bytes(through_grid(train, grid))),
            "train": data_uri(png_bytes(train))}


def build_casestudy_view(summary: Mapping, joined: pd.DataFrame, candidates: Path, training_files: list[str],
                         grid: int) -> dict:
    """The template's context: the summary, plots as data URIs, pairs and tables."""
    samples = joined[joined["group"] == "sample"].sort_values("label_ssim", ascending=False)
    control = joined[joined["group"] != "sample"].sort_values("gate_score", ascending=False)
    thresholds = summary["thresholds"]
    memo = pd.DataFrame(summary["memorization"])
    disagree = samples[samples["gate_label"] != samples["label"]].head(DISAGREEMENTS_SHOWN)
    return {
        "s": summary,
        "memorization_plot": data_uri(memorization_png(memo["copies"].tolist(), memo["memorized_fraction"].tolist(),
                                                       memo["sample_share"].tolist())) if len(memo) else None,
        "agreement_plot": data_uri(score_agreement_png(samples["label_ssim"], samples["gate_score"],
                                                       thresholds["similar"], thresholds["duplicate"])),
        "pairs": [_pair(r, candidates, training_files, grid) for r in samples.head(PAIRS_SHOWN).to_dict("records")],
        "disagreements": [_pair(r, candidates, training_files, grid) for r in disagree.to_dict("records")],
        "control": control.to_dict("records"),
        "labels": ("different", "similar", "duplicate"),
    }


def render_casestudy(summary: Mapping, joined: pd.DataFrame, candidates: Path, training_files: list[str], grid: int,
                     out_path: Path) -> Path:
    """Write ``casestudy.html`` (atomically) and return its path."""
    view = build_casestudy_view(summary, joined, Path(candidates), training_files, grid)
    html = _environment().get_template("casestudy.html.j2").render(**view)
    return write_atomically(html, Path(out_path))
