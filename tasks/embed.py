"""Embedding stage (runs on the flow's task runner: a thread, or a Dask worker)."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.progress import console_progress


@task(name="embed", persist_result=False)
def embed_task(pixels_path: str, rows: list[int], model_path: str, out_path: str,
               device: str = "auto", batch_size: int = 256, label: str = "embedding",
               precision: str = "auto") -> str:
    """Embed ``pixels[rows]``; writes an (N, D) float32 ``.npy``.  A progress artifact
    shows how far it got in the Prefect UI."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from deepssim.audit import embed_pixels

    total = len(rows)
    artifact = create_progress_artifact(progress=0.0, description=f"deepssim {label}: {total} image(s)")
    step = max(1, total // 20)

    def to_artifact(done: int, total: int) -> None:
        if done == total or done % step < batch_size:
            update_progress_artifact(artifact_id=artifact, progress=100.0 * done / max(1, total))

    with console_progress(label, also=to_artifact) as progress:
        embed_pixels(Path(pixels_path), rows, Path(model_path), Path(out_path), device, batch_size, progress,
                     precision)
    update_progress_artifact(artifact_id=artifact, progress=100.0)
    get_run_logger().info("embedded %d image(s)", total)
    return out_path
