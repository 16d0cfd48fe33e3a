"""Outputs of an audit: CSV/JSON contract files, the HTML report and Prefect artifacts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from deepssim.config import AuditSettings
from deepssim.audit import (QUARANTINE_COLUMNS, VERDICT_COLUMNS, VOLUME_COLUMNS, quarantine_table,
                              write_summary, write_table)
from deepssim.audit import read_manifest
from deepssim.store import read_pixel_rows

_ORDER = {"duplicate": 0, "similar": 1, "different": 2}


def worst_first(verdicts: pd.DataFrame) -> pd.DataFrame:
    key = verdicts["label"].map(_ORDER)
    return verdicts.assign(_k=key).sort_values(["_k", "score", "image_id"], ascending=[True, False, True]) \
        .drop(columns="_k")


@task(name="write-outputs", persist_result=False)
def write_outputs_task(out_dir: str, summary: dict, verdicts_path: str | None, volumes_path: str | None,
                       manifest_path: str | None) -> dict:
    """verdicts.csv, volumes.csv, quarantine.csv and summary.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    verdicts = pd.read_parquet(verdicts_path) if verdicts_path else pd.DataFrame(columns=VERDICT_COLUMNS)
    volumes = pd.read_parquet(volumes_path) if volumes_path else pd.DataFrame(columns=VOLUME_COLUMNS)
    manifest = read_manifest(Path(manifest_path)) if manifest_path else None
    quarantine = quarantine_table(manifest) if manifest is not None else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    files = {
        "verdicts": write_table(verdicts, VERDICT_COLUMNS, out / "verdicts.csv"),
        "volumes": write_table(volumes, VOLUME_COLUMNS, out / "volumes.csv"),
        "quarantine": write_table(quarantine, QUARANTINE_COLUMNS, out / "quarantine.csv"),
        "summary": write_summary(summary, out / "summary.json"),
    }
    return {k: str(v) for k, v in files.items()}


def _aligned_views(candidate: np.ndarray, reference: np.ndarray, row) -> dict:
    """The training image carried into the candidate's frame by the alignment that decided
    the row's score, and their difference, as PNGs (a flipped or rotated copy then looks like
    what it is); {} when no verified alignment decided it."""
    from deepssim.audit import aligned_reference, alignment_of
    from governance_reports.images import png_bytes

    alignment = alignment_of(row)
    if alignment is None:
        return {}
    aligned = aligned_reference(reference, alignment)
    return {"aligned_png": png_bytes(aligned), "difference_png": png_bytes(np.abs(candidate - aligned) * 2.0)}


def _evidence(verdicts: pd.DataFrame, pixels_path: str | None, search: dict, settings: AuditSettings) -> list[dict]:
    from governance_reports.images import png_bytes

    n = settings.evidence_pairs
    top = worst_first(verdicts)
    top = top[top["label"] != "different"].head(n) if (top["label"] != "different").any() else top.head(min(n, 4))
    if not len(top) or not pixels_path:
        return []
    pixels = np.load(pixels_path, mmap_mode="r")
    images = pd.read_parquet(search["snapshot"])
    refs = read_pixel_rows(Path(search["pixel_dir"]), images.iloc[top["nearest_index"].astype(int).to_numpy()])
    rows = []
    for r, ref in zip(top.itertuples(), refs):
        candidate, ref = np.asarray(pixels[int(r.row)], np.float32), np.asarray(ref, np.float32)
        aligned = _aligned_views(candidate, ref, r)
        rows.append({"candidate_id": r.image_id, "candidate_png": png_bytes(candidate), "nearest_id": r.nearest_id,
                     "nearest_png": png_bytes(ref), "score": float(r.score), "embedding_score": float(r.embedding_score),
                     "label": r.label, "alignment": r.alignment, **aligned})
    return rows


@task(name="render-report", persist_result=False)
def render_report_task(out_dir: str, summary: dict, files: dict, pixels_path: str | None,
                       search: dict | None, settings: AuditSettings) -> str:
    """The self-contained HTML report with the evidence pairs side by side (``search``: the
    search stage's result, whose cohort snapshot the verdicts' ``nearest_index`` points into)."""
    from governance_reports import render_report

    verdicts = pd.read_csv(files["verdicts"], keep_default_na=False, na_values=[""])
    evidence = []
    if len(verdicts) and search and files.get("verdicts_internal"):
        internal = pd.read_parquet(Path(files["verdicts_internal"]))
        evidence = _evidence(internal, pixels_path, search, settings)
    context = {
        "summary": summary,
        "verdicts": verdicts.to_dict("records"),
        "volumes": pd.read_csv(files["volumes"]).to_dict("records"),
        "quarantine": pd.read_csv(files["quarantine"]).to_dict("records"),
        "validation": summary.get("validation"),
        "evidence": evidence,
        "best_scores": verdicts["score"].dropna().astype(float).tolist() if len(verdicts) else [],
    }
    return str(render_report(context, Path(out_dir) / "report.html"))


# Retried: the Prefect API may hiccup, and keyed artifacts are idempotent (a retry adds a
# version, never a wrong verdict).  Store tasks are not retried by Prefect: Store already
# waits up to --wait for a lock, and a retry would break that bound.
def _summary_markdown(summary: dict, db: str | None) -> str:
    counts, run = summary.get("counts", {}), summary.get("run", {})
    md = [f"# DeepSSIM gate: **{summary['verdict'].upper()}**", "", summary.get("reason", ""), "",
          "| label | count |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in counts.items()]
    md += ["", f"cohort `{summary.get('cohort', {}).get('name')}` · model `{summary.get('model', {}).get('model_id')}`"
           f" · thresholds {summary.get('thresholds', {}).get('similar')}/{summary.get('thresholds', {}).get('duplicate')}",
           "", f"audit `{run.get('audit_id')}` · its report, verdicts and summary stay in the store: "
           f"`deepssim audits export {run.get('audit_id')} --out DIR" + (f" --db {db}`" if db else "`"),
           "", "Images are named by opaque refs here (`ref-…`); the report and verdicts.csv map them to files."]
    return "\n".join(md)


def top_matches(verdicts_csv: str, top_n: int) -> list[dict]:
    """The worst candidates as opaque refs, labels and scores (no ids, paths or folder names)."""
    from deepssim.audit import image_ref

    if not Path(verdicts_csv).exists():
        return []
    verdicts = pd.read_csv(verdicts_csv, keep_default_na=False)
    return [{"rank": rank, "candidate": image_ref(r.image_id), "label": r.label, "score": r.score,
             "nearest": image_ref(r.nearest_id) if r.nearest_id else ""}
            for rank, r in enumerate(worst_first(verdicts).head(top_n).itertuples(), start=1)]


@task(name="publish-artifacts", persist_result=False, retries=2, retry_delay_seconds=1)
def publish_artifacts_task(summary: dict, verdicts_csv: str, report_path: str, top_n: int = 20,
                           db: str | None = None) -> None:
    """Prefect UI artifacts with stable keys: verdict, counts, opaque refs and scores — no
    pixels, ids, paths or folder names (a cohort's folders are often patient codes)."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    create_markdown_artifact(key="deepssim-gate-summary", markdown=_summary_markdown(summary, db),
                             description="DeepSSIM memorization gate verdict")
    rows = top_matches(verdicts_csv, top_n)
    create_table_artifact(key="deepssim-top-matches", table=rows or [{"candidate": "", "label": "none"}],
                          description="Worst candidates (opaque refs) and their nearest training images")
    create_link_artifact(key="deepssim-report", link=Path(report_path).resolve().as_uri(),
                         link_text="DeepSSIM audit report", description="Self-contained HTML audit report")
