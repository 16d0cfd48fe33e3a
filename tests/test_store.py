"""The DuckDB store: schema version, transactional registration, model separation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepssim.metric.checkpoint import CheckpointMeta
from deepssim.config import EncoderConfig
from deepssim.store.database import SCHEMA_VERSION, Store, StoreError

DIM = 8


def _meta(tag: str) -> CheckpointMeta:
    return CheckpointMeta(encoder=EncoderConfig(embedding_dim=DIM), sha256=tag * 64)


def _rows(n: int, prefix: str = "img") -> pd.DataFrame:
    """Image rows as the register task builds them (input hashes are fake but unique)."""
    ids = [f"{prefix}_{i:02d}.png" for i in range(n)]
    return pd.DataFrame({"image_id": ids, "source_path": [f"/data/{i}" for i in ids],
                         "sha256": [f"s{i}" for i in ids], "input_sha256": [f"h{i}" for i in ids],
                         "height": 128, "width": 128, "volume_id": None,
                         "pixel_row": np.arange(n, dtype=np.int32)})


def _embeddings(rows: pd.DataFrame, seed: int = 0, dim: int = DIM) -> tuple[pd.DataFrame, np.ndarray]:
    vectors = np.random.default_rng(seed).normal(size=(len(rows), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pd.DataFrame({"input_sha256": rows["input_sha256"], "embedding": list(vectors)}), vectors


def _snapshot(store: Store) -> dict:
    tables = ["cohorts", "images", "registrations", f"embeddings_d{DIM}"]
    return {t: store.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.duckdb", wait_s=1) as s:
        s.ensure_model(_meta("a"))
        yield s


def test_new_store_records_schema_version_and_rejects_another(tmp_path):
    path = tmp_path / "v.duckdb"
    with Store(path) as s:
        assert s.con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        s.con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(path, read_only=True)


def test_read_only_open_of_missing_or_foreign_file_is_a_store_error(tmp_path):
    import duckdb

    with pytest.raises(StoreError, match="no store"):
        Store(tmp_path / "absent.duckdb", read_only=True)
    duckdb.connect(str(tmp_path / "other.duckdb")).execute("CREATE TABLE t (x INT)").close()
    with pytest.raises(StoreError, match="not a deepssim store"):
        Store(tmp_path / "other.duckdb", read_only=True)


def test_register_round_trips_embeddings_in_cohort_order(store, tmp_path):
    rows = _rows(5).iloc[::-1]  # insertion order must not matter: cohort order is image_id
    emb, vectors = _embeddings(rows)
    stats = store.register("c", rows, emb, _meta("a").model_id, "shard", ["/data"])
    assert (stats.images, stats.new_images, stats.embedded) == (5, 5, 5)
    got = store.cohort_embeddings("c", _meta("a").model_id)
    order = np.argsort(rows["image_id"].to_numpy())
    np.testing.assert_array_equal(got, vectors[order])
    store.close()
    with Store(store.path, read_only=True) as ro:  # readers never need to write
        np.testing.assert_array_equal(ro.cohort_embeddings("c", _meta("a").model_id), vectors[order])


def test_failed_register_leaves_the_store_unchanged(store):
    model = _meta("a").model_id
    first = _rows(3)
    store.register("c", first, _embeddings(first)[0], model, "shard", ["/data"])
    before = _snapshot(store)
    more = _rows(4, prefix="new")
    bad, _ = _embeddings(more, dim=DIM + 1)  # wrong width: fails after cohorts/images were written
    with pytest.raises(Exception):
        store.register("c", more, bad, model, "shard2", ["/data2"])
    assert _snapshot(store) == before
    assert sorted(store.cohort_images("c")["image_id"]) == sorted(first["image_id"])
    assert store.con.execute("SELECT source_roots FROM cohorts").fetchone()[0] == '["/data"]'


def test_failed_first_register_creates_no_cohort(store):
    rows = _rows(2)
    bad, _ = _embeddings(rows, dim=DIM - 1)
    with pytest.raises(Exception):
        store.register("c", rows, bad, _meta("a").model_id, "shard", ["/data"])
    with pytest.raises(StoreError, match="unknown cohort 'c'"):
        store.cohort_images("c")


def test_embeddings_of_two_models_are_never_mixed(store):
    model_a, model_b = _meta("a").model_id, store.ensure_model(_meta("b"))
    rows = _rows(4)
    emb_a, vectors_a = _embeddings(rows, seed=1)
    store.register("c", rows, emb_a, model_a, "shard", ["/data"])
    assert store.known_embeddings(rows["input_sha256"].tolist(), model_b) == set()
    with pytest.raises(StoreError, match=r"4 image\(s\) of cohort 'c' have no embedding under model " + model_b):
        store.cohort_embeddings("c", model_b)
    # half the cohort embedded under b: still refused (never a partial search)
    emb_b, _ = _embeddings(rows.iloc[:2], seed=2)
    assert store.add_embeddings(emb_b, model_b) == 2
    with pytest.raises(StoreError, match=r"2 image\(s\)"):
        list(store.iter_cohort_embeddings("c", model_b))
    np.testing.assert_array_equal(store.cohort_embeddings("c", model_a), vectors_a)


def test_unknown_model_and_cohort_are_store_errors(store):
    with pytest.raises(StoreError, match="unknown model"):
        store.cohort_embeddings("c", "deepssim-nope")
    store.register("known", _rows(1), _embeddings(_rows(1))[0], _meta("a").model_id, "s", ["/d"])
    with pytest.raises(StoreError, match=r"unknown cohort 'c' \(registered: known\)"):
        store.cohort_images("c")


def test_reregistering_inserts_no_new_embeddings(store):
    model = _meta("a").model_id
    rows = _rows(3)
    emb, _ = _embeddings(rows)
    store.register("c", rows, emb, model, "shard", ["/data"])
    again = store.register("c", rows, _embeddings(rows.iloc[:0])[0], model, "shard", ["/data"])
    assert (again.images, again.new_images, again.embedded) == (3, 0, 0)
    assert _snapshot(store)[f"embeddings_d{DIM}"] == 3


def test_exportable_audits_are_those_whose_files_the_store_holds(store):
    """What the scheduled gate's folder pruning asks before deleting a run folder."""
    def audit(audit_id: str) -> dict:
        return {"audit_id": audit_id, "started_at": pd.Timestamp("2026-01-01"), "cohort": "c",
                "model_id": "m", "verdict": "pass"}

    results = pd.DataFrame({"image_id": ["x.png"], "label": ["different"], "score": [0.1]})
    store.record_audit(audit("with-files"), results, {"summary.json": b"{}"})
    store.record_audit(audit("without-files"), results)
    asked = ["with-files", "without-files", "never-recorded"]
    assert store.exportable_audits(asked) == {"with-files"}
    assert store.exportable_audits([]) == set()
