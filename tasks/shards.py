"""Shard tasks for distributed runs: each ingests a slice of the file list on a worker
and returns paths only (its manifest and pixels stay in its own folder)."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from deepssim.config import IngestConfig


@task(name="ingest-shard", persist_result=False)
def ingest_shard_task(paths: list[str], work_dir: str, ingest: IngestConfig, size: int, root: str) -> dict:
    """Ingest ``paths`` (ids relative to ``root``) into ``work_dir``; returns file paths."""
    from deepssim.io import ingest as run_ingest
    from deepssim.pipeline import write_manifest

    work = Path(work_dir)
    result = run_ingest([Path(p) for p in paths], ingest, size, work, root=Path(root))
    manifest_path = write_manifest(result.manifest, work, "ingested.parquet")
    get_run_logger().info("shard: ingested %d image(s), quarantined %d", len(result.ok), len(result.quarantined))
    return {"manifest": str(manifest_path), "pixels": str(result.pixels_path)}
