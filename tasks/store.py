"""Stages that read or write the DuckDB store.  Called directly from the flow (never
submitted to a task runner), so only the flow process ever opens the database."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task

from deepssim.audit import blank_to_none, input_sha256, ok_rows, read_manifest
from deepssim.store import Store


@task(name="resolve-model", persist_result=False)
def resolve_model_task(db: str, model_path: str | None, wait_s: float) -> dict:
    """The checkpoint an audit or registration uses: an explicit path, else the store's
    champion, else the shipped default.  The model is recorded in the store."""
    from deepssim.metric import DEFAULT_MODEL, read_meta
    from deepssim.store import champion_path

    with Store(db, wait_s=wait_s) as store:
        path = Path(model_path) if model_path else (champion_path(store) or DEFAULT_MODEL)
        meta = read_meta(path)
        store.ensure_model(meta, path, status="champion" if not model_path and path == DEFAULT_MODEL else "external")
    return {"path": str(path), "model_id": meta.model_id, "sha256": meta.sha256,
            "embedding_dim": meta.encoder.embedding_dim, "input_size": meta.encoder.input_size,
            "metrics": meta.metrics}


@task(name="plan-registration", persist_result=False)
def plan_registration_task(db: str, cohort: str, manifest_path: str, pixels_path: str,
                           model_id: str, wait_s: float) -> dict:
    """Hash model inputs and find which images are new or changed, and which inputs still
    need an embedding under ``model_id``: new ones, and unchanged ones the model has not
    embedded yet (a cohort registered under an earlier model, e.g. before an upgrade)."""
    ok = ok_rows(read_manifest(Path(manifest_path)))
    pixels = np.load(pixels_path, mmap_mode="r")
    ok["input_sha256"] = input_sha256(pixels[ok["row"].to_numpy()]) if len(ok) else []
    with Store(db, wait_s=wait_s) as store:
        existing = store.existing_images(cohort)
        known = store.known_embeddings(ok["input_sha256"].tolist(), model_id)
    before = dict(zip(existing["image_id"], existing["input_sha256"]))
    changed = ok[[before.get(i) != h for i, h in zip(ok["image_id"], ok["input_sha256"])]]
    to_embed = ok.drop_duplicates("input_sha256")
    to_embed = to_embed[~to_embed["input_sha256"].isin(known)]
    plan_path = Path(manifest_path).with_name("registration_plan.parquet")
    changed.to_parquet(plan_path, index=False)
    return {"plan": str(plan_path), "changed": len(changed), "unchanged": len(ok) - len(changed),
            "embed_rows": to_embed["row"].astype(int).tolist(),
            "embed_hashes": to_embed["input_sha256"].tolist()}


@task(name="register", persist_result=False)
def register_task(db: str, cohort: str, plan: dict, pixels_path: str, embeddings_path: str | None,
                  model_id: str, roots: list[str], quarantined: int, wait_s: float) -> dict:
    """Write pixels (one shard) and images + new embeddings in one transaction."""
    changed = pd.read_parquet(plan["plan"])
    pixels = np.load(pixels_path, mmap_mode="r")
    emb = np.load(embeddings_path) if embeddings_path else np.zeros((0, 0), np.float32)
    new_embeddings = pd.DataFrame({"input_sha256": plan["embed_hashes"], "embedding": list(emb)})
    with Store(db, wait_s=wait_s) as store:
        if len(changed):
            shard_pixels = np.round(np.asarray(pixels[changed["row"].to_numpy()], np.float32) * 255).astype(np.uint8)
            shard = store.write_pixel_shard(shard_pixels, f"{cohort}-{plan_tag(changed)}")
        else:
            shard = ""
        rows = pd.DataFrame({
            "image_id": changed["image_id"], "source_path": changed["source_path"],
            "sha256": changed["sha256"], "input_sha256": changed["input_sha256"],
            "height": int(pixels.shape[1]) if len(changed) else None,
            "width": int(pixels.shape[2]) if len(changed) else None,
            "volume_id": blank_to_none(changed["volume_id"]),
            "pixel_row": np.arange(len(changed), dtype=np.int32),
        })
        stats = store.register(cohort, rows, new_embeddings, model_id, shard, roots, quarantined)
        total = int(len(store.cohort_images(cohort)))
    get_run_logger().info("cohort %s: %d new/changed image(s), %d embedded, %d total",
                          cohort, len(changed), stats.embedded, total)
    return {"registration_id": stats.registration_id, "new_or_changed": len(changed),
            "new_images": stats.new_images, "embedded": stats.embedded, "cohort_images": total}


def plan_tag(changed: pd.DataFrame) -> str:
    """A content-derived shard name: the same registration writes the same shard."""
    import hashlib

    h = hashlib.sha256("".join(changed["image_id"] + changed["input_sha256"]).encode()).hexdigest()
    return h[:16]


@task(name="search", persist_result=False)
def search_task(db: str, cohort: str, model_id: str, embeddings_path: str, k: int,
                candidate_block: int, cohort_block: int, wait_s: float, out_path: str) -> dict:
    """Exact top-k of every candidate against the cohort, streamed from the store."""
    from deepssim.store import topk_cosine

    queries = np.load(embeddings_path)
    with Store(db, read_only=False, wait_s=wait_s) as store:
        images = store.cohort_images(cohort)
        if not len(images):
            raise ValueError(f"cohort '{cohort}' has no images")

        def blocks():
            return store.iter_cohort_embeddings(cohort, model_id, block=cohort_block)

        scores, index = topk_cosine(queries, blocks, k=k, query_block=candidate_block, key_block=cohort_block)
        pixel_dir = str(store.pixel_dir)
    np.savez(out_path, scores=scores, index=index)
    # the cohort as this search saw it: later stages index it by position, so they must not
    # re-query a store that a concurrent registration may have changed since
    snapshot = str(Path(out_path).with_name("cohort_snapshot.parquet"))
    images[["image_id", "source_path", "pixel_shard", "pixel_row"]].to_parquet(snapshot, index=False)
    get_run_logger().info("searched %d candidate(s) against %d training image(s)", len(queries), len(images))
    return {"neighbours": out_path, "cohort_images": len(images), "snapshot": snapshot, "pixel_dir": pixel_dir}


@task(name="record-audit", persist_result=False)
def record_audit_task(db: str, audit: dict, verdicts_path: str | None, wait_s: float,
                      files: dict[str, str] | None = None, summary_json: str | None = None) -> None:
    """Store the audit row, its per-candidate results and its output files (``files``: name
    -> path as written; ``summary_json``: summary.json's final text) in one transaction."""
    results = pd.read_csv(verdicts_path) if verdicts_path and Path(verdicts_path).exists() else pd.DataFrame()
    kept = {name: Path(path).read_bytes() for name, path in (files or {}).items() if path and Path(path).exists()}
    if summary_json is not None:
        kept["summary.json"] = summary_json.encode("utf-8")
    with Store(db, wait_s=wait_s) as store:
        store.record_audit(audit, results, kept)
