"""Streaming exact top-k cosine search against a brute-force reference."""
from __future__ import annotations

import numpy as np
import pytest

from deepssim.store.search import topk_cosine


def brute_force(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full score matrix; order by score descending, ties by the lower key index."""
    scores = queries.astype(np.float64) @ keys.astype(np.float64).T
    order = np.stack([np.lexsort((np.arange(len(keys)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), order


def _unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k,query_block,key_block", [(5, 7, 13), (20, 50, 8), (1, 3, 1000)])
def test_matches_brute_force_on_random_unit_vectors(k, query_block, key_block):
    rng = np.random.default_rng(k)
    queries, keys = _unit(rng, 41, 32), _unit(rng, 157, 32)
    scores, index = topk_cosine(queries, keys, k=k, query_block=query_block, key_block=key_block)
    ref_s, ref_i = brute_force(queries, keys, k)
    assert scores.shape == index.shape == (41, k)
    np.testing.assert_array_equal(index, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_exact_ties_break_by_lower_index_whatever_the_blocks():
    """Small-integer vectors make many dot products exactly equal in float32."""
    rng = np.random.default_rng(0)
    keys = rng.integers(-1, 2, size=(60, 6)).astype(np.float32)
    keys[30:] = keys[:30]  # every key has an exact duplicate in another block
    queries = rng.integers(-1, 2, size=(9, 6)).astype(np.float32)
    ref_s, ref_i = brute_force(queries, keys, 12)
    assert (np.diff(ref_s, axis=1) == 0).any()  # the data really has ties inside the top-k
    for key_block in (1, 7, 29, 60):
        scores, index = topk_cosine(queries, keys, k=12, query_block=4, key_block=key_block)
        np.testing.assert_array_equal(index, ref_i, err_msg=f"key_block={key_block}")
        np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


def test_k_larger_than_a_block_and_than_the_keys():
    rng = np.random.default_rng(3)
    queries, keys = _unit(rng, 5, 16), _unit(rng, 23, 16)
    scores, index = topk_cosine(queries, keys, k=9, key_block=4)
    np.testing.assert_array_equal(index, brute_force(queries, keys, 9)[1])
    scores, index = topk_cosine(queries, keys, k=40, key_block=4)
    assert index.shape == (5, 23)  # fewer than k when K < k
    assert all(sorted(row) == list(range(23)) for row in index.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()


def test_callable_block_source_is_restreamed_per_query_block():
    rng = np.random.default_rng(4)
    queries, keys = _unit(rng, 10, 8), _unit(rng, 50, 8)
    sizes = [3, 17, 1, 29]  # uneven blocks, as Arrow batches may be
    calls = []

    def blocks():
        calls.append(1)
        start = 0
        for size in sizes:
            yield keys[start:start + size]
            start += size

    scores, index = topk_cosine(queries, blocks, k=6, query_block=4)
    assert len(calls) == 3  # ceil(10 / 4) query blocks, each streams the keys afresh
    np.testing.assert_array_equal(index, brute_force(queries, keys, 6)[1])
    one_shot, one_idx = topk_cosine(queries, blocks(), k=6, query_block=4)
    np.testing.assert_array_equal(one_idx, index)
    np.testing.assert_array_equal(one_shot, scores)


def test_empty_queries_and_keys():
    rng = np.random.default_rng(5)
    scores, index = topk_cosine(np.zeros((0, 8), np.float32), _unit(rng, 4, 8), k=3)
    assert scores.shape[0] == 0 and index.shape[0] == 0
    scores, index = topk_cosine(_unit(rng, 2, 8), np.zeros((0, 8), np.float32), k=3)
    assert scores.shape == index.shape == (2, 0)
