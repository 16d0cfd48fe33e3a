"""Stages of the case study: sample the generator, label samples and the non-member
control through the generator's grid, and the case-study report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task

from deepssim.config import Thresholds
from deepssim.evaluation import (SampleFilter, casestudy_summary, generate_samples, grid_labels,
                                 write_control)
from deepssim.generative import MemorizationCohort, load_generator, read_cohort_images


@task(name="sample-generator", persist_result=False)
def sample_task(generator_path: str, data_root: str, out_dir: str, n: int, seed: int,
                sample_steps: int | None, control_subjects: list[str], thresholds: Thresholds) -> dict:
    """Sample the generator into ``out_dir/candidates/samples``, write the non-member control
    into ``out_dir/candidates/control`` and label both (``out_dir/labels.csv``)."""
    log = get_run_logger()
    generator = load_generator(Path(generator_path))
    cohort = MemorizationCohort.from_rows(generator.meta["cohort"])
    training = read_cohort_images(Path(data_root), cohort)
    grid = generator.config.size
    out = Path(out_dir)
    table, samples = generate_samples(generator, n, seed, training.shape[1:], out / "candidates" / "samples",
                                      SampleFilter(), sample_steps)
    log.info("sampled %d images, %d filtered", len(table), int((table["file"] == "").sum()))
    control_files, control_pixels = _control(Path(data_root), control_subjects, cohort, grid, out)
    kept = table[table["file"] != ""]
    labels = pd.concat([
        grid_labels(samples, training, grid, thresholds).assign(
            image_id=[f"samples/{f}" for f in kept["file"]], group="sample"),
        grid_labels(control_pixels, training, grid, thresholds).assign(
            image_id=[f"control/{f}" for f in control_files], group="non-member control"),
    ], ignore_index=True)
    labels["nearest_file"] = [cohort.images[i].file for i in labels["nearest"]]
    labels["copies"] = [cohort.images[i].copies for i in labels["nearest"]]
    table.to_csv(out / "samples_filtered.csv", index=False)
    labels.to_csv(out / "labels.csv", index=False)
    return {"candidates": str(out / "candidates"), "labels": str(out / "labels.csv"),
            "filtered": str(out / "samples_filtered.csv"), "grid": grid,
            "training_files": [str(Path(data_root) / im.file) for im in cohort.images]}


def _control(data_root: Path, subjects: list[str], cohort: MemorizationCohort, grid: int, out: Path
             ) -> tuple[list[str], np.ndarray]:
    """Every other slice of the non-member subjects (none may be in the training cohort)."""
    rows = pd.read_csv(data_root / "manifest.csv")
    trained = {im.subject for im in cohort.images}
    overlap = trained & set(subjects)
    if overlap:
        raise ValueError(f"control subjects {sorted(overlap)} are in the generator's training cohort")
    chosen = rows[rows["subject"].isin(subjects)].sort_values(["subject", "slice_index"]).iloc[::2]
    if chosen.empty:
        raise ValueError(f"no slices of the control subjects {subjects} in {data_root}/manifest.csv")
    from PIL import Image

    images = np.stack([np.asarray(Image.open(data_root / f).convert("L"), np.float32) / 255 for f in chosen["file"]])
    names = [f"{s}-{int(i):03d}.png" for s, i in zip(chosen["subject"], chosen["slice_index"])]
    return names, write_control(images, names, grid, out / "candidates" / "control")


@task(name="casestudy-report", persist_result=False)
def casestudy_report_task(out_dir: str, generator_meta: dict, sampled: dict, audit_dir: str, outcome: dict,
                          settings: dict) -> dict:
    """Join labels and the gate's verdicts; write ``samples.csv``, ``casestudy.json`` and
    ``casestudy.html`` into ``out_dir``."""
    from governance_reports.casestudy import render_casestudy

    out = Path(out_dir)
    labels = pd.read_csv(sampled["labels"])
    verdicts = pd.read_csv(Path(audit_dir) / "verdicts.csv")
    filtered = pd.read_csv(sampled["filtered"], keep_default_na=False)
    joined = labels.merge(verdicts[["image_id", "label", "score", "nearest_id", "verified", "alignment"]]
                          .rename(columns={"label": "gate_label", "score": "gate_score", "nearest_id": "gate_nearest"}),
                          on="image_id", how="left")
    joined["gate_label"] = joined["gate_label"].fillna("quarantined")
    joined.to_csv(out / "samples.csv", index=False)
    copies = np.array([row["copies"] for row in generator_meta["cohort"]])
    summary = casestudy_summary(joined, filtered, copies, generator_meta, outcome, settings)
    (out / "casestudy.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    report = render_casestudy(summary, joined, Path(sampled["candidates"]), sampled["training_files"],
                              sampled["grid"], out / "casestudy.html")
    get_run_logger().info("case study: %s", summary["headline"])
    return {"summary": summary, "report": str(report)}
