"""Verification and gate stages of an audit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task

from deepssim.config import AuditSettings
from deepssim.audit import decide, volume_table
from deepssim.audit import ok_rows, read_manifest, verdict_table, verify_neighbours
from deepssim.store import read_pixel_rows
from tasks.progress import console_progress


@task(name="verify", persist_result=False)
def verify_task(search: dict, manifest_path: str, pixels_path: str, settings: AuditSettings,
                out_path: str) -> dict:
    """Re-rank each candidate's nearest training images by verified aligned SSIM and
    build the per-candidate verdict table (``verdicts.parquet``).

    ``search`` is the search stage's result: neighbours, the cohort snapshot they index
    and the pixel folder.  The store itself is not opened: the longest stage must not lock
    out a concurrent audit or registration."""
    candidates = ok_rows(read_manifest(Path(manifest_path)))
    pixels = np.load(pixels_path, mmap_mode="r")
    with np.load(search["neighbours"]) as found:
        emb_scores, emb_index = found["scores"], found["index"]
    images = pd.read_parquet(search["snapshot"])

    def load_references(indices: np.ndarray) -> np.ndarray:
        return read_pixel_rows(Path(search["pixel_dir"]), images.iloc[indices])

    cand_pixels = pixels[candidates["row"].to_numpy()] if len(candidates) else pixels[:0]
    with console_progress("verify", unit="cand") as progress:
        result = verify_neighbours(cand_pixels, emb_scores, emb_index, load_references, settings.verification,
                                   progress=progress)
    table = verdict_table(candidates, emb_scores, result, images, settings.thresholds)
    table.to_parquet(out_path, index=False)
    get_run_logger().info("verified %d of %d candidate(s)", int(result.verified.sum()), len(table))
    return {"verdicts": out_path, "verified": int(result.verified.sum())}


@task(name="gate", persist_result=False)
def gate_task(verdicts_path: str, settings: AuditSettings, quarantined: int) -> dict:
    """Apply the policy: labels -> volume rows -> pass/fail with reasons."""
    verdicts = pd.read_parquet(verdicts_path)
    volumes = volume_table(verdicts)
    decision = decide(verdicts, settings.policy, volumes, quarantined)
    volumes_path = Path(verdicts_path).with_name("volumes.parquet")
    volumes.to_parquet(volumes_path, index=False)
    get_run_logger().info("gate %s: %s", decision.verdict.upper(), json.dumps(decision.counts))
    return {"decision": decision.as_dict(), "volumes": str(volumes_path),
            "duplicates": duplicate_ids(verdicts)}


def duplicate_ids(verdicts: pd.DataFrame, n: int = 10) -> list[str]:
    """Image ids (not pixels) of the ``n`` highest-scoring duplicates, for the run's message."""
    dup = verdicts[verdicts["label"] == "duplicate"]
    return dup.sort_values(["score", "image_id"], ascending=[False, True])["image_id"].head(n).astype(str).tolist()
