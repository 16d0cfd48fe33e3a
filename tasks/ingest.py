"""Ingestion and validation stages."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from deepssim.config import IngestConfig
from deepssim.audit import read_manifest, write_manifest
from tasks.progress import console_progress


@task(name="ingest", persist_result=False)
def ingest_task(paths: list[str], work_dir: str, ingest: IngestConfig, size: int,
                root: str | None = None) -> dict:
    """Read every file under ``paths``; write ``manifest.parquet`` and ``pixels.npy``."""
    from deepssim.io import ingest as run_ingest

    work = Path(work_dir)
    with console_progress("ingest", unit="file") as progress:
        result = run_ingest([Path(p) for p in paths], ingest, size, work, root=Path(root) if root else None,
                            progress=progress)
    manifest_path = write_manifest(result.manifest, work, "ingested.parquet")
    ok, bad = len(result.ok), len(result.quarantined)
    get_run_logger().info("ingested %d image(s), quarantined %d file(s)/part(s)", ok, bad)
    return {"manifest": str(manifest_path), "pixels": str(result.pixels_path), "root": str(result.root),
            "ok": ok, "quarantined": bad}


@task(name="validate", persist_result=False)
def validate_task(manifest_path: str, ingest: IngestConfig) -> dict:
    """Great Expectations suite over the manifest; failing images are quarantined."""
    from deepssim.audit import ValidationConfig, validate_manifest

    manifest = read_manifest(Path(manifest_path))
    summary, validated = validate_manifest(manifest, ValidationConfig.from_ingest(ingest))
    out = write_manifest(validated, Path(manifest_path).parent)
    ok = int(((validated["status"] == "ok") & (validated["row"] >= 0)).sum())
    get_run_logger().info("validation %s: %d image(s) auditable",
                          "passed" if summary["success"] else "flagged rows", ok)
    return {"manifest": str(out), "validation": summary, "ok": ok,
            "quarantined": int((validated["status"] == "quarantined").sum())}
