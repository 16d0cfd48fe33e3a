"""The DuckDB store: cohorts, images, models, embeddings, audits.

One process writes (DuckDB lets no other process open a file that is open read-write),
so the flows open the store in their own process and workers only return arrays.
Every multi-row write runs in one transaction: a crash leaves the store as it was.

Embeddings are keyed by ``(input_sha256, model_id)`` — the hash of the exact model input
— so an unchanged image is never embedded twice under one model, and two models'
embeddings can never be mixed.  They live in ``embeddings_d{D}`` tables as
``FLOAT[D]`` arrays.  Preprocessed pixels of registered images (uint8, (N, S, S)) are
kept in ``.npy`` shards beside the database so verification and reports can show the
training image a candidate matched.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

SCHEMA_VERSION = 2
# v2: audit_files (each audit's output files as first written).  A v1 store is upgraded
# in place by its first read-write open; the new table only adds.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS cohorts (
    name VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
    source_roots VARCHAR);
CREATE TABLE IF NOT EXISTS images (
    cohort VARCHAR NOT NULL, image_id VARCHAR NOT NULL, source_path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL, input_sha256 VARCHAR NOT NULL, height INTEGER, width INTEGER,
    volume_id VARCHAR, pixel_shard VARCHAR NOT NULL, pixel_row INTEGER NOT NULL,
    registration_id VARCHAR NOT NULL, registered_at TIMESTAMP NOT NULL,
    PRIMARY KEY (cohort, image_id));
CREATE TABLE IF NOT EXISTS models (
    model_id VARCHAR PRIMARY KEY, sha256 VARCHAR NOT NULL, path VARCHAR, parent VARCHAR,
    embedding_dim INTEGER NOT NULL, config JSON, training JSON, metrics JSON,
    status VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, promoted_at TIMESTAMP, reason VARCHAR);
CREATE TABLE IF NOT EXISTS registrations (
    registration_id VARCHAR PRIMARY KEY, cohort VARCHAR NOT NULL, model_id VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, images INTEGER, new_images INTEGER,
    embedded INTEGER, quarantined INTEGER);
CREATE TABLE IF NOT EXISTS audits (
    audit_id VARCHAR PRIMARY KEY, started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP,
    cohort VARCHAR NOT NULL, model_id VARCHAR NOT NULL, candidate_root VARCHAR,
    thresholds JSON, policy JSON, settings JSON, verdict VARCHAR NOT NULL, counts JSON,
    volume_counts JSON, reasons JSON, complete BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS audit_results (
    audit_id VARCHAR NOT NULL, image_id VARCHAR NOT NULL, source_path VARCHAR, label VARCHAR,
    score DOUBLE, embedding_score DOUBLE, nearest_id VARCHAR, nearest_path VARCHAR,
    verified BOOLEAN, alignment VARCHAR, PRIMARY KEY (audit_id, image_id));
CREATE TABLE IF NOT EXISTS audit_files (
    audit_id VARCHAR NOT NULL, name VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, content BLOB NOT NULL,
    PRIMARY KEY (audit_id, name));
CREATE TABLE IF NOT EXISTS calibrations (
    calibration_id VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, cohort VARCHAR,
    model_id VARCHAR, similar_threshold DOUBLE NOT NULL, duplicate_threshold DOUBLE NOT NULL, source VARCHAR NOT NULL,
    details JSON);
"""


class StoreError(RuntimeError):
    """The store cannot do what was asked (unknown cohort, wrong schema, ...)."""


class StoreBusyError(StoreError):
    """Another process holds the database open for writing."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used" in text


@dataclass
class RegistrationStats:
    registration_id: str
    images: int
    new_images: int
    embedded: int


class Store:
    """A DuckDB file plus its pixel shards.  Use as a context manager.

    ``wait_s``: how long to wait for another process's lock before :class:`StoreBusyError`.
    """

    def __init__(self, path: str | os.PathLike, read_only: bool = False, wait_s: float = 30.0):
        import duckdb

        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise StoreError(f"no store at {self.path}")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if not _is_lock_error(exc):
                    raise StoreError(f"cannot open store {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise StoreBusyError(
                        f"store {self.path} is busy: another deepssim process holds it for writing; "
                        f"waited {wait_s:.0f}s (raise --wait to wait longer)") from None
                time.sleep(0.5)
        if not read_only:
            self._migrate()
        self._check_version()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    @property
    def pixel_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".pixels")

    def _migrate(self) -> None:
        self.con.execute("BEGIN")
        self.con.execute(_SCHEMA)
        version = self.con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if version is None or version < SCHEMA_VERSION:
            self.con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, utcnow()])
        self.con.execute("COMMIT")

    def _check_version(self) -> None:
        try:
            version = self.con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        except Exception as exc:  # read-only open of a file that was never initialised
            raise StoreError(f"{self.path} is not a deepssim store") from exc
        if version != SCHEMA_VERSION:
            older = version is not None and version < SCHEMA_VERSION
            hint = " (any write — cohort register, audit — upgrades it)" if older else ""
            raise StoreError(f"store schema version {version}, this deepssim needs {SCHEMA_VERSION}{hint}")

    # ------------------------------------------------------------------ models
    def ensure_model(self, meta, path: str | os.PathLike | None = None, status: str = "champion",
                     parent: str | None = None, reason: str | None = None) -> str:
        """Record a checkpoint (``CheckpointMeta``) if unknown; return its model id."""
        known = self.con.execute("SELECT 1 FROM models WHERE model_id = ?", [meta.model_id]).fetchone()
        if not known:
            self.con.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [meta.model_id, meta.sha256, str(path) if path else None, parent,
                 meta.encoder.embedding_dim, json.dumps(meta.to_json()["encoder"]),
                 json.dumps(meta.training, default=str), json.dumps(meta.metrics, default=str),
                 status, utcnow(), utcnow() if status == "champion" else None, reason])
        return meta.model_id

    def models(self) -> pd.DataFrame:
        return self.con.execute("SELECT * FROM models ORDER BY created_at").df()

    def _embedding_table(self, dim: int) -> str:
        name = f"embeddings_d{int(dim)}"
        if self.read_only:  # a read-only connection cannot CREATE; the table must exist
            if not self.con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone():
                raise StoreError(f"store {self.path} holds no {int(dim)}-d embeddings")
            return name
        self.con.execute(f"CREATE TABLE IF NOT EXISTS {name} (input_sha256 VARCHAR NOT NULL, "
                         f"model_id VARCHAR NOT NULL, embedding FLOAT[{int(dim)}] NOT NULL, "
                         f"PRIMARY KEY (input_sha256, model_id))")
        return name

    def _model_dim(self, model_id: str) -> int:
        row = self.con.execute("SELECT embedding_dim FROM models WHERE model_id = ?", [model_id]).fetchone()
        if row is None:
            raise StoreError(f"unknown model {model_id}")
        return int(row[0])

    # ------------------------------------------------------------------ registration
    def known_embeddings(self, input_hashes: list[str], model_id: str) -> set[str]:
        """Which of ``input_hashes`` already have an embedding under ``model_id``."""
        if not input_hashes:
            return set()
        table = self._embedding_table(self._model_dim(model_id))
        probe = pd.DataFrame({"h": list(set(input_hashes))})
        self.con.register("probe_hashes", probe)
        try:
            rows = self.con.execute(f"SELECT e.input_sha256 FROM {table} e JOIN probe_hashes p "
                                    f"ON e.input_sha256 = p.h WHERE e.model_id = ?", [model_id]).fetchall()
        finally:
            self.con.unregister("probe_hashes")
        return {r[0] for r in rows}

    def existing_images(self, cohort: str) -> pd.DataFrame:
        return self.con.execute("SELECT image_id, input_sha256 FROM images WHERE cohort = ?", [cohort]).df()

    def write_pixel_shard(self, pixels: np.ndarray, name: str) -> str:
        """Persist uint8 pixels (N, S, S) as ``<db>.pixels/<name>.npy`` atomically."""
        self.pixel_dir.mkdir(parents=True, exist_ok=True)
        final = self.pixel_dir / f"{name}.npy"
        tmp = self.pixel_dir / f".{name}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(pixels, dtype=np.uint8))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final.name

    def register(self, cohort: str, rows: pd.DataFrame, new_embeddings: pd.DataFrame, model_id: str,
                 pixel_shard: str, source_roots: list[str], quarantined: int = 0) -> RegistrationStats:
        """Insert or update a cohort's images and new embeddings in ONE transaction.

        ``rows``: image_id, source_path, sha256, input_sha256, height, width, volume_id, pixel_row.
        ``new_embeddings``: input_sha256, embedding (list/array of D floats).
        """
        reg_id = uuid.uuid4().hex[:16]
        now = utcnow()
        table = self._embedding_table(self._model_dim(model_id))
        before = set(self.existing_images(cohort)["image_id"])
        frame = rows.assign(cohort=cohort, pixel_shard=pixel_shard, registration_id=reg_id, registered_at=now)
        frame = frame[["cohort", "image_id", "source_path", "sha256", "input_sha256", "height", "width",
                       "volume_id", "pixel_shard", "pixel_row", "registration_id", "registered_at"]]
        emb = _embedding_frame(new_embeddings, model_id)
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute(
                "INSERT INTO cohorts VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "updated_at = excluded.updated_at, source_roots = excluded.source_roots",
                [cohort, now, now, json.dumps(source_roots)])
            self.con.register("new_images", frame)
            self.con.execute("INSERT OR REPLACE INTO images SELECT * FROM new_images")
            self.con.unregister("new_images")
            if emb.num_rows:
                self.con.register("new_embeddings", emb)
                self.con.execute(f"INSERT OR IGNORE INTO {table} SELECT input_sha256, model_id, "
                                 f"embedding::FLOAT[{self._model_dim(model_id)}] FROM new_embeddings")
                self.con.unregister("new_embeddings")
            self.con.execute("INSERT INTO registrations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [reg_id, cohort, model_id, now, utcnow(), len(frame),
                              len(set(frame["image_id"]) - before), emb.num_rows, quarantined])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return RegistrationStats(reg_id, len(frame), len(set(frame["image_id"]) - before), emb.num_rows)

    def missing_cohort_embeddings(self, cohort: str, model_id: str) -> pd.DataFrame:
        """Images of ``cohort`` with no embedding under ``model_id`` (after a model change)."""
        table = self._embedding_table(self._model_dim(model_id))
        return self.con.execute(
            f"SELECT i.* FROM images i LEFT JOIN {table} e ON e.input_sha256 = i.input_sha256 "
            f"AND e.model_id = ? WHERE i.cohort = ? AND e.input_sha256 IS NULL ORDER BY i.image_id",
            [model_id, cohort]).df()

    def add_embeddings(self, new_embeddings: pd.DataFrame, model_id: str) -> int:
        table = self._embedding_table(self._model_dim(model_id))
        emb = _embedding_frame(new_embeddings, model_id)
        if not emb.num_rows:
            return 0
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.register("new_embeddings", emb)
            self.con.execute(f"INSERT OR IGNORE INTO {table} SELECT input_sha256, model_id, "
                             f"embedding::FLOAT[{self._model_dim(model_id)}] FROM new_embeddings")
            self.con.unregister("new_embeddings")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return emb.num_rows

    # ------------------------------------------------------------------ reading
    def cohorts(self) -> pd.DataFrame:
        return self.con.execute(
            "SELECT c.name, c.created_at, c.updated_at, count(i.image_id) AS images FROM cohorts c "
            "LEFT JOIN images i ON i.cohort = c.name GROUP BY ALL ORDER BY c.name").df()

    def cohort_images(self, cohort: str) -> pd.DataFrame:
        """All images of a cohort in a stable order (image_id)."""
        if not self.con.execute("SELECT 1 FROM cohorts WHERE name = ?", [cohort]).fetchone():
            known = ", ".join(self.cohorts()["name"]) or "none"
            raise StoreError(f"unknown cohort '{cohort}' (registered: {known})")
        return self.con.execute("SELECT * FROM images WHERE cohort = ? ORDER BY image_id", [cohort]).df()

    def iter_cohort_embeddings(self, cohort: str, model_id: str, block: int = 65536) -> Iterator[np.ndarray]:
        """Stream (n, D) float32 blocks in the order of :meth:`cohort_images`, through Arrow.

        Raises :class:`StoreError` if any image lacks an embedding under ``model_id`` —
        an audit must never silently skip training images or mix models."""
        dim = self._model_dim(model_id)
        table = self._embedding_table(dim)
        missing = self.missing_cohort_embeddings(cohort, model_id)
        if len(missing):
            raise StoreError(f"{len(missing)} image(s) of cohort '{cohort}' have no embedding under "
                             f"model {model_id}: re-embed the cohort first (register it again under this model, "
                             f"or `deepssim model promote {model_id}`)")
        reader = self.con.sql(
            f"SELECT e.embedding FROM images i JOIN {table} e ON e.input_sha256 = i.input_sha256 "
            f"AND e.model_id = $model WHERE i.cohort = $cohort ORDER BY i.image_id",
            params={"model": model_id, "cohort": cohort}).to_arrow_reader(block)
        for batch in reader:
            col = batch.column(0)
            yield col.values.to_numpy(zero_copy_only=False).reshape(len(col), dim).astype(np.float32, copy=False)

    def cohort_embeddings(self, cohort: str, model_id: str) -> np.ndarray:
        blocks = list(self.iter_cohort_embeddings(cohort, model_id))
        return np.concatenate(blocks) if blocks else np.zeros((0, self._model_dim(model_id)), np.float32)

    def load_pixels(self, images: pd.DataFrame) -> np.ndarray:
        """Pixels (N, S, S) float32 in [0, 1] of store rows (see :func:`read_pixel_rows`)."""
        return read_pixel_rows(self.pixel_dir, images)

    # ------------------------------------------------------------------ audits
    def record_audit(self, audit: dict, results: pd.DataFrame, files: dict[str, bytes] | None = None) -> None:
        """Write an audit row, its per-candidate results and its output ``files`` (name ->
        bytes as written: summary.json, verdicts.csv, report.html, ...) in one transaction."""
        cols = ["audit_id", "image_id", "source_path", "label", "score", "embedding_score",
                "nearest_id", "nearest_path", "verified", "alignment"]
        frame = results.assign(audit_id=audit["audit_id"])
        for c in cols:
            if c not in frame:
                frame[c] = None
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute(
                "INSERT OR REPLACE INTO audits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [audit["audit_id"], audit["started_at"], audit.get("finished_at"), audit["cohort"],
                 audit["model_id"], audit.get("candidate_root"), json.dumps(audit.get("thresholds")),
                 json.dumps(audit.get("policy")), json.dumps(audit.get("settings"), default=str),
                 audit["verdict"], json.dumps(audit.get("counts")), json.dumps(audit.get("volume_counts")),
                 json.dumps(audit.get("reasons")), bool(audit.get("complete", False))])
            self.con.register("new_results", frame[cols])
            self.con.execute("DELETE FROM audit_results WHERE audit_id = ?", [audit["audit_id"]])
            self.con.execute("INSERT INTO audit_results SELECT * FROM new_results")
            self.con.unregister("new_results")
            self.con.execute("DELETE FROM audit_files WHERE audit_id = ?", [audit["audit_id"]])
            for name, content in sorted((files or {}).items()):
                self.con.execute("INSERT INTO audit_files VALUES (?, ?, ?, ?)",
                                 [audit["audit_id"], name, hashlib.sha256(content).hexdigest(), content])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def audits(self, limit: int = 50) -> pd.DataFrame:
        """Newest first: id, times, cohort, model, verdict, counts (JSON), complete, and
        ``files``: how many output files the store holds for it."""
        return self.con.execute(
            "SELECT a.audit_id, a.started_at, a.finished_at, a.cohort, a.model_id, a.verdict, a.counts, "
            "a.complete, (SELECT count(*) FROM audit_files f WHERE f.audit_id = a.audit_id) AS files "
            "FROM audits a ORDER BY a.started_at DESC, a.audit_id LIMIT ?", [limit]).df()

    def exportable_audits(self, audit_ids: Iterable[str]) -> set[str]:
        """Those of ``audit_ids`` whose output files the store holds (``deepssim audits export``
        can write them back); unknown ids are simply not in the result."""
        ids = sorted(set(audit_ids))
        if not ids:
            return set()
        rows = self.con.execute("SELECT DISTINCT audit_id FROM audit_files WHERE audit_id IN "
                                f"({', '.join('?' * len(ids))})", ids).fetchall()
        return {audit_id for (audit_id,) in rows}

    def audit_files(self, audit_id: str) -> dict[str, bytes]:
        """An audit's output files as first written (name -> bytes); {} if none were kept.

        Raises :class:`StoreError` for an unknown audit id."""
        if not self.con.execute("SELECT count(*) FROM audits WHERE audit_id = ?", [audit_id]).fetchone()[0]:
            raise StoreError(f"unknown audit {audit_id!r} (see `deepssim audits list`)")
        rows = self.con.execute("SELECT name, sha256, content FROM audit_files WHERE audit_id = ? ORDER BY name",
                                [audit_id]).fetchall()
        files = {name: bytes(content) for name, _, content in rows}
        damaged = [name for name, digest, _ in rows if hashlib.sha256(files[name]).hexdigest() != digest]
        if damaged:
            raise StoreError(f"audit {audit_id}: stored {', '.join(damaged)} no longer match(es) its checksum")
        return files

    def audit_results(self, audit_id: str) -> pd.DataFrame:
        return self.con.execute("SELECT * FROM audit_results WHERE audit_id = ? ORDER BY image_id",
                                [audit_id]).df()

    def record_calibration(self, thresholds, cohort: str | None, model_id: str | None, details: dict) -> str:
        cid = uuid.uuid4().hex[:16]
        self.con.execute("INSERT INTO calibrations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [cid, utcnow(), cohort, model_id, thresholds.similar, thresholds.duplicate,
                          thresholds.source, json.dumps(details, default=str)])
        return cid

    def latest_calibration(self, cohort: str | None = None) -> dict | None:
        row = self.con.execute(
            "SELECT calibration_id, similar_threshold, duplicate_threshold, source FROM calibrations "
            "WHERE cohort IS NOT DISTINCT FROM ? ORDER BY created_at DESC LIMIT 1", [cohort]).fetchone()
        return dict(zip(("calibration_id", "similar", "duplicate", "source"), row)) if row else None


def read_pixel_rows(pixel_dir: Path, images: pd.DataFrame) -> np.ndarray:
    """Pixels (N, S, S) float32 in [0, 1] of image rows (``pixel_shard``, ``pixel_row``).

    Reads only the ``.npy`` shards, never the database, so stages can use it with the store
    closed (verification does: the longest stage must not hold the lock)."""
    out = None
    for shard, g in images.reset_index(drop=True).groupby("pixel_shard", sort=False):
        arr = np.load(Path(pixel_dir) / shard, mmap_mode="r")
        if out is None:
            out = np.zeros((len(images),) + arr.shape[1:], np.float32)
        out[g.index.to_numpy()] = arr[g["pixel_row"].to_numpy()] / 255.0
    return out if out is not None else np.zeros((0, 0, 0), np.float32)


def _embedding_frame(new_embeddings: pd.DataFrame | None, model_id: str):
    """An Arrow table (input_sha256, model_id, embedding FixedSizeList<float32>[D]):
    bulk-loads into DuckDB without a Python loop over vectors."""
    import pyarrow as pa

    if new_embeddings is None or not len(new_embeddings):
        return pa.table({"input_sha256": pa.array([], pa.string()), "model_id": pa.array([], pa.string()),
                         "embedding": pa.array([], pa.list_(pa.float32()))})
    frame = new_embeddings.drop_duplicates("input_sha256")
    matrix = np.ascontiguousarray(np.stack(frame["embedding"].to_numpy()), dtype=np.float32)
    flat = pa.array(matrix.reshape(-1), type=pa.float32())
    return pa.table({"input_sha256": pa.array(frame["input_sha256"].tolist(), pa.string()),
                     "model_id": pa.array([model_id] * len(frame), pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])})
