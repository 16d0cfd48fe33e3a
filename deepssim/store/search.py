"""Exact cosine top-k search, streamed in blocks.

Embeddings are unit vectors, so cosine is a dot product.  Memory is bounded by the block
sizes: a (candidate_block × cohort_block) score tile plus the running top-k; no
candidates × cohort matrix is ever held.  The search is exact — an approximate miss
would be a false pass — and ties are broken by the lower cohort index, so results do not
depend on the block sizes.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import torch


def _as_blocks(keys, block: int) -> Iterator[torch.Tensor]:
    if callable(keys):
        keys = keys()
    if isinstance(keys, (np.ndarray, torch.Tensor)):
        for start in range(0, len(keys), block):
            yield torch.as_tensor(keys[start:start + block], dtype=torch.float32)
    else:
        for chunk in keys:
            yield torch.as_tensor(np.array(chunk, dtype=np.float32, copy=True))


def _merge(best_s: torch.Tensor, best_i: torch.Tensor, new_s: torch.Tensor, new_i: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.cat([best_s, new_s], dim=1)
    index = torch.cat([best_i, new_i], dim=1)
    # order by index, then stable-sort by score: equal scores keep the lower index first
    by_index = torch.argsort(index, dim=1, stable=True)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), index.gather(1, order)


def _block_topk(tile: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each row of a (q, n) score tile, n >= 1; among equal scores the lower
    column wins.  ``torch.topk`` picks an arbitrary subset of the scores tied with the
    k-th, so rows with such a tie (rare: e.g. a training image registered twice) are
    re-selected with a stable sort."""
    kk = min(k, tile.shape[1])
    if kk == tile.shape[1]:
        return torch.topk(tile, kk, dim=1, sorted=False)
    # one extra neighbour tells whether the k-th score is tied beyond the cut, without a
    # second pass over the tile
    s, i = torch.topk(tile, kk + 1, dim=1, sorted=True)
    tied = (s[:, kk] == s[:, kk - 1]).nonzero().flatten()
    s, i = s[:, :kk].contiguous(), i[:, :kk].contiguous()
    if len(tied):
        order = torch.argsort(tile[tied], dim=1, descending=True, stable=True)[:, :kk]
        i[tied] = order
        s[tied] = tile[tied].gather(1, order)
    return s, i


# Largest score tile (queries x cohort rows) held at once: 2**26 float32 = 256 MiB.
MAX_TILE_ELEMENTS = 2**26


@torch.inference_mode()
def topk_cosine(queries: np.ndarray | torch.Tensor, keys: np.ndarray | torch.Tensor | Callable | Iterable,
                k: int = 5, query_block: int = 4096, key_block: int = 65536,
                device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of each query among ``keys``.

    Args:
        queries: (Q, D) unit vectors.
        keys: (K, D) unit vectors; or a zero-argument callable returning an iterable of
            (K_i, D) blocks in key order (e.g. Arrow batches streamed from the store),
            called once per query block so memory stays bounded by the block sizes; or a
            one-shot iterable of blocks (then held in memory to serve every query block).
        k: neighbours per query; fewer are returned when K < k.
    Returns:
        scores (Q, k') float32 descending, indices (Q, k') int64 into the key order.
    """
    q_all = torch.as_tensor(queries, dtype=torch.float32)
    one_shot = not callable(keys) and not isinstance(keys, (np.ndarray, torch.Tensor))
    key_blocks = list(_as_blocks(keys, key_block)) if one_shot else None
    out_s, out_i = [], []
    for qs in range(0, max(len(q_all), 1), query_block):
        q = q_all[qs:qs + query_block].to(device)
        best_s = torch.full((len(q), 0), -float("inf"), device=device)
        best_i = torch.zeros((len(q), 0), dtype=torch.long, device=device)
        offset = 0
        blocks = key_blocks if key_blocks is not None else _as_blocks(keys, key_block)
        step = max(1, MAX_TILE_ELEMENTS // max(1, len(q)))
        for kb in blocks:
            kb = kb.to(device)
            for sub in range(0, len(kb), step):  # bounds the score tile, not the store reads
                tile = q @ kb[sub:sub + step].T
                if min(k, tile.shape[1]):
                    s, i = _block_topk(tile, k)
                    best_s, best_i = _merge(best_s, best_i, s, i + offset + sub, k)
                del tile  # free before the next tile is allocated: peak memory is one tile
            offset += len(kb)
        out_s.append(best_s.cpu())
        out_i.append(best_i.cpu())
    return torch.cat(out_s).numpy(), torch.cat(out_i).numpy()
