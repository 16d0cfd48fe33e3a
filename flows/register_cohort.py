"""The register_cohort flow: ingest, validate, embed (only what is new) and store a
training cohort; emits the ``deepssim.cohort.registered`` event."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.events import emit_event

from deepssim.config import AuditSettings
from tasks.ingest import validate_task
from tasks.store import plan_registration_task, register_task, resolve_model_task

from .common import resolve_db, scratch_dir
from .runners import DEFAULT_SHARD_FILES, embed_stage, ingest_stage


@flow(name="register-cohort", persist_result=False)
def register_cohort(name: str, paths: list[str], db: str | None = None, settings: dict | None = None,
                    model_path: str | None = None, root: str | None = None,
                    shard_files: int = DEFAULT_SHARD_FILES) -> dict:
    """Register (or update) training cohort ``name`` from files/folders ``paths``.

    Unchanged images (same id, same model input) are skipped and inputs that already have
    an embedding under the model are not embedded again.  All store writes happen in one
    transaction at the end: a crash leaves the previous state of the cohort.  On a Dask
    task runner ingestion and embedding run as shards (``shard_files`` files each).
    """
    log = get_run_logger()
    s = AuditSettings.from_record(settings)
    db = resolve_db(db)
    with scratch_dir("deepssim-register-") as work:
        model = resolve_model_task(db, model_path, s.store_wait_s)
        ingested = ingest_stage(paths, work, s.ingest, model["input_size"], root, shard_files)
        validated = validate_task(ingested["manifest"], s.ingest)
        if validated["ok"] == 0:
            raise ValueError(f"nothing to register: all {validated['quarantined']} file(s)/slice(s) quarantined")
        plan = plan_registration_task(db, name, validated["manifest"], ingested["pixels"], model["model_id"],
                                      s.store_wait_s)
        emb_path = None
        if plan["embed_rows"]:
            emb_path = embed_stage(ingested["pixels"], plan["embed_rows"], model["path"],
                                   str(work / "embeddings.npy"), s.device, s.batch_size, "cohort embedding",
                                   precision=s.precision)
        stats = register_task(db, name, plan, ingested["pixels"], emb_path, model["model_id"],
                              [str(Path(p).resolve()) for p in paths], validated["quarantined"], s.store_wait_s)
    result = {"cohort": name, "model_id": model["model_id"], "quarantined": validated["quarantined"],
              "unchanged": plan["unchanged"], **stats}
    emit_event(event="deepssim.cohort.registered",
               resource={"prefect.resource.id": f"deepssim.cohort.{name}", "prefect.resource.name": name},
               payload={"cohort": name, "db": db, "model_id": model["model_id"],
                        "new_or_changed": stats["new_or_changed"], "cohort_images": stats["cohort_images"]})
    log.info("registered cohort %s: %s", name, {k: v for k, v in result.items() if k != "cohort"})
    return result
