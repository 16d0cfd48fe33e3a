"""Distributed execution: sharded ingestion gives the unsharded ids and rows, and an audit
on a Dask LocalCluster (2 worker processes) gives the same verdicts as the default runner."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE_DATA


def test_sharded_ingest_equals_unsharded(tmp_path):
    """Shards of 5 files, merged, give the same manifest rows and pixels as one ingest."""
    from deepssim.config import IngestConfig
    from deepssim.io import ingest
    from deepssim.audit.shards import merge_ingested, plan_shards

    config, src = IngestConfig(), SAMPLE_DATA / "train"
    whole = ingest([src], config, 64, tmp_path / "whole")
    plan = plan_shards([str(src)], config, shard_files=5)
    assert len(plan.shards) > 2
    assert sorted(sum(plan.shards, [])) == sorted(str(p) for p in src.rglob("*") if p.is_file())
    parts = []
    for i, files in enumerate(plan.shards):
        r = ingest(files, config, 64, tmp_path / f"s{i}", root=plan.root)
        parts.append({"manifest": str(_write(r.manifest, tmp_path / f"s{i}")), "pixels": str(r.pixels_path)})
    merged = merge_ingested(parts, tmp_path / "merged", 64)
    got = pd.read_parquet(merged["manifest"]).set_index("image_id").sort_index()
    want = whole.manifest.set_index("image_id").sort_index()
    assert list(got.index) == list(want.index)
    px_got, px_want = np.load(merged["pixels"]), whole.pixels()
    np.testing.assert_array_equal(px_got[got["row"].to_numpy()], px_want[want["row"].to_numpy()])
    assert got["sha256"].equals(want["sha256"])


def _write(manifest, folder):
    from deepssim.audit.pipeline import write_manifest

    return write_manifest(manifest, folder, "ingested.parquet")


def test_unknown_runner_and_stray_address_are_refused():
    from flows.runners import make_task_runner

    with pytest.raises(ValueError):
        make_task_runner("spark")
    with pytest.raises(ValueError):
        make_task_runner("thread", address="tcp://127.0.0.1:8786")
    assert make_task_runner("thread") is None


@pytest.mark.prefect
@pytest.mark.slow
def test_dask_audit_gives_same_verdicts_as_default_runner(tmp_path):
    """Register the bundled cohort, audit the bundled candidates twice: default runner and
    Dask LocalCluster (2 processes, shards of 4 files -> several shards)."""
    from flows.audit import audit, audit_outcome
    from flows.register_cohort import register_cohort
    from flows.runners import with_runner

    db = str(tmp_path / "gate.duckdb")
    settings = {"device": "cpu"}
    reg = register_cohort(
        name="train", paths=[str(SAMPLE_DATA / "train")], db=db, settings=settings, shard_files=8)
    assert reg["embedded"] == reg["cohort_images"] > 0
    outs = {}
    for kind in ("thread", "dask"):
        out = tmp_path / kind
        flow = with_runner(audit, kind, n_workers=2)
        state = flow(candidates=[str(SAMPLE_DATA / "candidates")], cohort="train", out_dir=str(out), db=db,
                     settings=settings, shard_files=4, return_state=True)
        assert audit_outcome(state)["exit_code"] == 1  # planted copies fail the gate
        outs[kind] = pd.read_csv(out / "verdicts.csv").sort_values("image_id").reset_index(drop=True)
    a, b = outs["thread"], outs["dask"]
    assert len(a) == len(list((SAMPLE_DATA / "candidates").iterdir()))
    assert a["image_id"].tolist() == b["image_id"].tolist()
    assert a["label"].tolist() == b["label"].tolist()
    assert a["nearest_id"].tolist() == b["nearest_id"].tolist()
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)
    assert (a["label"] == "duplicate").any()
