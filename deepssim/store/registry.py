"""Model registry over the store's ``models`` table (champion / challenger / retired /
external).  The champion is the model audits use unless one is named explicitly.

Promotion is ordered so that an audit never meets a champion without embeddings:
:func:`reembed_cohorts` first stores every registered cohort's embeddings under the new
model (harmless while it is only a challenger), then :func:`promote` switches the
champion in one transaction.  Embeddings stay keyed by model id, so an audit always reads
the cohort under the model it embeds its candidates with
(:meth:`~deepssim.store.database.Store.iter_cohort_embeddings` refuses anything else).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from deepssim.store.database import Store, StoreError, utcnow

STATUSES = ("champion", "challenger", "retired", "external")


def champion(store: Store) -> dict | None:
    """The most recently promoted champion whose weights file still exists."""
    rows = store.con.execute(
        "SELECT model_id, path FROM models WHERE status = 'champion' "
        "ORDER BY promoted_at DESC NULLS LAST, created_at DESC").fetchall()
    for model_id, path in rows:
        if path and Path(path).is_file():
            return {"model_id": model_id, "path": path}
    return None


def champion_path(store: Store) -> Path | None:
    found = champion(store)
    return Path(found["path"]) if found else None


def models_dir(db: str | Path) -> Path:
    """Where retrained checkpoints live: ``<db>.models/`` beside the store (like its
    pixel shards), so a store and its models move together."""
    db = Path(db)
    return db.with_name(db.name + ".models")


def get_model(store: Store, model_id: str) -> dict:
    """One registry row as a dict (JSON columns decoded); :class:`StoreError` if unknown."""
    frame = store.con.execute("SELECT * FROM models WHERE model_id = ?", [model_id]).df()
    if not len(frame):
        known = ", ".join(store.con.execute("SELECT model_id FROM models").df()["model_id"]) or "none"
        raise StoreError(f"unknown model '{model_id}' (registered: {known})")
    row = frame.iloc[0].to_dict()
    for col in ("config", "training", "metrics"):
        row[col] = json.loads(row[col]) if isinstance(row[col], str) and row[col] else row[col]
    return row


def record_model(store: Store, meta, path: str | Path, status: str, parent: str | None,
                 reason: str | None, metrics: dict | None = None) -> str:
    """Insert a model (or update status/metrics/reason of a known one); returns its id."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    store.ensure_model(meta, path, status=status, parent=parent, reason=reason)
    store.con.execute("UPDATE models SET status = ?, reason = ?, metrics = ?, parent = ? WHERE model_id = ?",
                      [status, reason, json.dumps(metrics if metrics is not None else meta.metrics, default=str),
                       parent, meta.model_id])
    return meta.model_id


def cohorts_missing(store: Store, model_id: str) -> dict[str, int]:
    """Per registered cohort, how many images lack an embedding under ``model_id``."""
    out = {}
    for name in store.cohorts()["name"]:
        n = len(store.missing_cohort_embeddings(name, model_id))
        if n:
            out[name] = n
    return out


def reembed_cohorts(store: Store, model_id: str, embed: Callable[[np.ndarray], np.ndarray],
                    block: int = 4096) -> dict[str, int]:
    """Embed every registered image that has no embedding under ``model_id``, from the
    store's pixel cache (uint8: the stored embedding then differs from one of the
    original float input by at most the 1/255 quantisation).  Returns new embeddings
    per cohort."""
    done = {}
    for name in store.cohorts()["name"]:
        missing = store.missing_cohort_embeddings(name, model_id).drop_duplicates("input_sha256")
        added = 0
        for start in range(0, len(missing), block):
            part = missing.iloc[start:start + block]
            vectors = embed(store.load_pixels(part))
            added += store.add_embeddings(pd.DataFrame({"input_sha256": part["input_sha256"].tolist(),
                                                        "embedding": list(vectors)}), model_id)
        done[name] = added
    return done


def promote(store: Store, model_id: str, reason: str, require_embedded: bool = True) -> dict:
    """Make ``model_id`` the champion (the previous champion is retired), in one transaction.

    Refuses (:class:`StoreError`) when the weights file is missing or, with
    ``require_embedded``, when any registered cohort lacks embeddings under the model:
    audits would otherwise fail on it.  Re-embed first (:func:`reembed_cohorts`)."""
    row = get_model(store, model_id)
    if not row["path"] or not Path(row["path"]).is_file():
        raise StoreError(f"model {model_id} has no weights file at {row['path']}")
    if require_embedded:
        missing = cohorts_missing(store, model_id)
        if missing:
            detail = ", ".join(f"{c}: {n}" for c, n in missing.items())
            raise StoreError(f"cohorts not embedded under {model_id} ({detail}): re-embed them first")
    previous = champion(store)
    now = utcnow()
    store.con.execute("BEGIN TRANSACTION")
    try:
        store.con.execute("UPDATE models SET status = 'retired' WHERE status = 'champion' AND model_id <> ?",
                          [model_id])
        store.con.execute("UPDATE models SET status = 'champion', promoted_at = ?, reason = ? WHERE model_id = ?",
                          [now, reason, model_id])
        store.con.execute("COMMIT")
    except BaseException:
        store.con.execute("ROLLBACK")
        raise
    return {"model_id": model_id, "previous": previous["model_id"] if previous else None,
            "promoted_at": now.isoformat(), "reason": reason}


def registry_table(store: Store) -> list[dict]:
    """One small row per model for the CLI and the Prefect dashboard (numbers only).

    A model without an evaluation of its own (the shipped champion, recorded with its
    training metrics) shows the latest evaluation it got as the champion a challenger was
    measured against — the same fixed set, so the columns compare; its parent is the model
    it was fine-tuned from, as its training record says."""
    found = store.con.execute("SELECT model_id, status, parent, created_at, promoted_at, reason, metrics, training "
                              "FROM models ORDER BY created_at DESC").fetchall()
    as_champion: dict[str, dict] = {}
    for r in reversed(found):  # oldest first: the newest evaluation wins
        metrics = json.loads(r[6]) if r[6] else {}
        if metrics.get("champion_id") and metrics.get("champion_eval"):
            as_champion[metrics["champion_id"]] = metrics["champion_eval"]
    rows = []
    for r in found:
        metrics = json.loads(r[6]) if r[6] else {}
        training = json.loads(r[7]) if r[7] else {}
        ev = metrics.get("eval") or as_champion.get(r[0]) or metrics
        bench = ev.get("benchmark") or {}
        parent = r[2] or training.get("fine_tuned_from") or ""
        rows.append({"model_id": r[0], "status": r[1], "parent": parent,
                     "created_at": str(r[3])[:19], "promoted_at": str(r[4])[:19] if r[4] else "",
                     "mae_augmented": _round(ev.get("mae_augmented")),
                     "copy_rate": _round(ev.get("copy_rate_gt_0.85")),
                     "macro_f1": _round(bench.get("macro_f1")), "reason": r[5] or ""})
    return rows


def audit_history(store: Store, limit: int = 50) -> list[dict]:
    """Recent audits: time, cohort, model, verdict and label counts."""
    rows = []
    for a in store.audits(limit).itertuples(index=False):
        counts = json.loads(a.counts) if isinstance(a.counts, str) and a.counts else {}
        rows.append({"started_at": str(a.started_at)[:19], "cohort": a.cohort, "model_id": a.model_id,
                     "verdict": a.verdict, "duplicate": counts.get("duplicate", 0),
                     "similar": counts.get("similar", 0), "different": counts.get("different", 0),
                     "quarantined": counts.get("quarantined", 0), "complete": bool(a.complete)})
    return rows


def _round(value) -> float | None:
    return round(float(value), 4) if value is not None else None
