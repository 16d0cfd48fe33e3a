"""Sharded ingestion and embedding: split the inputs, process shards anywhere, merge.

A distributed run (e.g. on Dask workers) cuts the input file list into shards, ingests
and embeds each shard in its own work folder and returns *paths*; the flow process then
merges the shards with the functions here.  Every shard is ingested with the same
``root`` so image ids are identical to an unsharded run, and shards are merged in the
order of the file list so pixel rows are deterministic.

Files of one folder always land in the same shard: a DICOM series is one folder of
files and must be read as one unit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import pandas as pd

from deepssim.config import IngestConfig

DEFAULT_SHARD_FILES = 512


@dataclass(frozen=True)
class ShardPlan:
    """``root``: what every shard's ids are relative to; ``shards``: lists of file paths."""

    root: str
    shards: list[list[str]]


def plan_shards(paths: Sequence[str | os.PathLike], config: IngestConfig, shard_files: int = DEFAULT_SHARD_FILES,
                root: str | os.PathLike | None = None) -> ShardPlan:
    """Walk ``paths`` once and pack its files into shards of about ``shard_files`` files,
    never splitting a folder's direct files across shards."""
    from deepssim.io.discover import default_root, discover

    paths = [Path(p) for p in paths]
    base = Path(os.path.abspath(root)) if root is not None else default_root(paths)
    by_folder: dict[str, list[str]] = {}
    for cand in discover(paths, base, config):
        by_folder.setdefault(str(PurePosixPath(cand.rel).parent), []).append(str(cand.path))
    shards: list[list[str]] = []
    current: list[str] = []
    for folder in sorted(by_folder):
        files = by_folder[folder]
        if current and len(current) + len(files) > max(1, shard_files):
            shards.append(current)
            current = []
        current = current + files
    if current:
        shards.append(current)
    # nothing found: one shard of the inputs themselves, so ingestion reports why
    return ShardPlan(str(base), shards or [[str(p) for p in paths]])


def merge_ingested(parts: Sequence[dict], work_dir: Path, size: int) -> dict:
    """Concatenate shard manifests (rows re-based) and pixel files into ``work_dir``.

    ``parts``: per shard ``{"manifest": parquet path, "pixels": npy path}`` in shard order.
    Returns ``{"manifest": path, "pixels": path, "ok": n, "quarantined": m}``.
    """
    from deepssim.io.ingest import PIXELS_FILE
    from deepssim.audit.pipeline import read_manifest, write_manifest

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    frames, offset = [], 0
    counts = [int(np.load(p["pixels"], mmap_mode="r").shape[0]) for p in parts]
    out = _open_out(work_dir / PIXELS_FILE, np.float16, (sum(counts), size, size))
    for part, n in zip(parts, counts):
        frame = read_manifest(Path(part["manifest"]))
        frame["row"] = np.where(frame["row"] >= 0, frame["row"] + offset, -1)
        frames.append(frame)
        if n:
            out[offset:offset + n] = np.load(part["pixels"], mmap_mode="r")
        offset += n
    if isinstance(out, np.memmap):
        out.flush()
    del out
    manifest = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    path = write_manifest(manifest, work_dir, "ingested.parquet")
    ok = int((manifest["status"] == "ok").sum()) if len(manifest) else 0
    return {"manifest": str(path), "pixels": str(work_dir / PIXELS_FILE), "ok": ok,
            "quarantined": len(manifest) - ok}


def split_rows(rows: Sequence[int], shard_rows: int) -> list[list[int]]:
    """Consecutive chunks of ``rows`` of at most ``shard_rows`` rows each."""
    rows = [int(r) for r in rows]
    step = max(1, shard_rows)
    return [rows[i:i + step] for i in range(0, len(rows), step)]


def merge_embeddings(paths: Sequence[str | os.PathLike], out_path: Path) -> Path:
    """Concatenate (n_i, D) float32 ``.npy`` shards, in order, into ``out_path``."""
    arrays = [np.load(p, mmap_mode="r") for p in paths]
    dim = arrays[0].shape[1] if arrays else 0
    out = _open_out(Path(out_path), np.float32, (sum(len(a) for a in arrays), dim))
    start = 0
    for a in arrays:
        out[start:start + len(a)] = a
        start += len(a)
    if isinstance(out, np.memmap):
        out.flush()
    del out
    return Path(out_path)


def _open_out(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A writable ``.npy`` memory map of ``shape``; an empty array is saved directly
    (a zero-length file cannot be memory-mapped)."""
    if 0 in shape:
        np.save(path, np.zeros(shape, dtype))
        return np.zeros(shape, dtype)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
