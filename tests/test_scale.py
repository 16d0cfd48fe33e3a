"""Scale paths: exact search streamed out of a real DuckDB store equals brute force, and
registration is incremental and crash-safe (through the real register_cohort flow)."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE_DATA


# ----------------------------------------------------------------------------- search
def _store_with(path, embeddings: np.ndarray, input_keys: list[str]):
    """A real store whose cohort ``c`` holds one image per key (image ids in key order of
    ``img-00000``...); images sharing a key share one stored embedding."""
    from deepssim.metric.checkpoint import DEFAULT_MODEL, read_meta
    from deepssim.store.database import Store

    store = Store(str(path))
    model_id = store.ensure_model(read_meta(DEFAULT_MODEL), DEFAULT_MODEL)
    n = len(input_keys)
    rows = pd.DataFrame({"image_id": [f"img-{i:05d}" for i in range(n)], "source_path": "x",
                         "sha256": input_keys, "input_sha256": input_keys, "height": 128, "width": 128,
                         "volume_id": None, "pixel_row": np.arange(n, dtype=np.int32)})
    uniq = dict(zip(input_keys, embeddings))
    emb = pd.DataFrame({"input_sha256": list(uniq), "embedding": list(uniq.values())})
    store.register("c", rows, emb, model_id, "none.npy", [])
    return store, model_id


def _brute_force(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full score matrix; descending score, ties by lower key index."""
    scores = queries.astype(np.float64) @ keys.astype(np.float64).T
    order = np.stack([np.lexsort((np.arange(len(keys)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), order


def test_store_streamed_search_equals_brute_force_with_ties(tmp_path):
    """Exact-arithmetic vectors (multiples of 1/16) so ties are exact; duplicated inputs
    make images share one embedding; k (40) exceeds the streamed block (16)."""
    from deepssim.store.search import topk_cosine

    rng = np.random.default_rng(0)
    dim, n_unique, n_images, k = 256, 150, 400, 40
    unique = rng.integers(-1, 2, (n_unique, dim)).astype(np.float32) / 16
    which = rng.integers(0, n_unique, n_images)  # many images share an input -> tied scores
    keys_by_image = unique[which]
    store, model_id = _store_with(tmp_path / "s.duckdb", keys_by_image,
                                  [f"h{j:04d}" for j in which])
    with store:
        queries = rng.integers(-1, 2, (37, dim)).astype(np.float32) / 16
        streamed = lambda: store.iter_cohort_embeddings("c", model_id, block=16)  # noqa: E731
        got_s, got_i = topk_cosine(queries, streamed, k=k, query_block=8, key_block=16)
    want_s, want_i = _brute_force(queries, keys_by_image, k)
    assert (got_s[:, :-1] == got_s[:, 1:]).any(), "the data must contain ties"
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6)


def test_store_streamed_search_random_unit_vectors(tmp_path):
    """Float data through Arrow batches: same neighbours and scores as one dense GEMM."""
    from deepssim.store.search import topk_cosine

    rng = np.random.default_rng(1)
    keys = rng.standard_normal((1000, 256)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    store, model_id = _store_with(tmp_path / "r.duckdb", keys, [f"h{i:05d}" for i in range(len(keys))])
    queries = np.concatenate([keys[[3, 500, 999]], rng.standard_normal((20, 256)).astype(np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with store:
        got_s, got_i = topk_cosine(queries, lambda: store.iter_cohort_embeddings("c", model_id, block=128),
                                   k=7, key_block=128)
    want_s, want_i = _brute_force(queries, keys, 7)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    assert got_i[:3, 0].tolist() == [3, 500, 999]


# ----------------------------------------------------------------------------- registration
def _counts(db: str) -> tuple[int, int]:
    from deepssim.store.database import Store

    with Store(db, read_only=True, wait_s=10) as store:
        images = store.con.execute("SELECT count(*) FROM images").fetchone()[0]
        embedded = store.con.execute("SELECT count(*) FROM embeddings_d256").fetchone()[0]
    return images, embedded


@pytest.mark.prefect
@pytest.mark.slow
def test_registration_is_incremental_and_crash_safe(tmp_path, train_dir, monkeypatch):
    """Unchanged folder: embeds nothing; +10 images: embeds exactly 10; a crash after
    embedding and before the store write leaves the store unchanged; a rerun completes."""
    import flows.register_cohort as reg_flow

    folder = tmp_path / "cohort"
    shutil.copytree(train_dir, folder)
    db = str(tmp_path / "gate.duckdb")

    def register() -> dict:
        return reg_flow.register_cohort(name="c", paths=[str(folder)], db=db, settings={"device": "cpu"})

    first = register()
    assert first["embedded"] == first["cohort_images"] == 8
    again = register()
    assert (again["embedded"], again["new_or_changed"], again["unchanged"]) == (0, 0, 8)
    extra = sorted((SAMPLE_DATA / "train" / "heudiconv_crlab").glob("*.png"))[:10]
    (folder / "new").mkdir()
    for p in extra:
        shutil.copy(p, folder / "new" / p.name)

    embedded = []
    real_embed = reg_flow.embed_stage

    def spy_embed(*args, **kwargs):
        embedded.append(len(args[1]))
        return real_embed(*args, **kwargs)

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash before the store write")

    monkeypatch.setattr(reg_flow, "embed_stage", spy_embed)
    monkeypatch.setattr(reg_flow, "register_task", crash)
    with pytest.raises(RuntimeError, match="injected"):
        register()
    assert embedded == [10], "the crashed run must have embedded the 10 new images"
    assert _counts(db) == (8, 8)
    monkeypatch.undo()
    resumed = register()
    assert (resumed["embedded"], resumed["new_or_changed"], resumed["cohort_images"]) == (10, 10, 18)
    assert _counts(db) == (18, 18)
