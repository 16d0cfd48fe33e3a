"""Reliability of the gate (issue 8): fail closed, crash-safe writes, concurrent audits,
deterministic outputs.

One cohort is registered once per module (``registered``); every test works on it or on
a copy of its files.  Subprocess targets live in ``tests/helpers/``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
HELPERS = REPO / "tests" / "helpers"
DEEPSSIM = Path(sys.executable).parent / "deepssim"
COHORT = "train"
CONTRACT_FILES = ("verdicts.csv", "volumes.csv", "quarantine.csv")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def registered(tmp_path_factory, train_dir, prefect_harness) -> dict:
    """A store with cohort ``train`` (8 real slices) registered through the real flow."""
    from flows.register_cohort import register_cohort

    root = tmp_path_factory.mktemp("reliability-store")
    db = str(root / "gate.duckdb")
    result = register_cohort(name=COHORT, paths=[str(train_dir)], db=db)
    assert result["cohort_images"] == 8
    return {"db": db, "root": root, "model_id": result["model_id"]}


def run_audit(candidates: Path, db: str, out: Path, verify: bool = False, **settings):
    """The audit flow in-process; returns its final state.  Verification (the slow stage)
    is off unless a test needs it: the failures injected here do not depend on it."""
    from flows.audit import audit

    settings = {"device": "cpu", "store_wait_s": 30, "verification": {"enabled": verify}, **settings}
    return audit(candidates=[str(candidates)], cohort=COHORT, out_dir=str(out), db=db, settings=settings,
                 return_state=True)


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def subprocess_env(prefect_harness) -> dict:
    """Environment for a child process: the test's offline Prefect, sharing the harness server."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if prefect_harness:
        env["PREFECT_API_URL"] = prefect_harness
    return env


# ----------------------------------------------------------------------------- fail closed
def _boom(*args, **kwargs):
    raise RuntimeError("injected failure")


def _inject(monkeypatch, stage: str) -> None:
    """Make one stage of the audit raise."""
    import governance_reports
    import tasks.audit
    import tasks.store

    targets = {
        "resolve-model": (tasks.store.resolve_model_task, "fn"),
        "search": (tasks.store.search_task, "fn"),
        "verify": (tasks.audit, "verify_neighbours"),
        "gate": (tasks.audit.gate_task, "fn"),
        "render-report": (governance_reports, "render_report"),
        "record-audit": (tasks.store.record_audit_task, "fn"),
    }
    obj, attr = targets[stage]
    monkeypatch.setattr(obj, attr, _boom)


@pytest.mark.parametrize("stage", ["resolve-model", "search", "verify", "gate", "render-report", "record-audit"])
def test_failure_at_any_stage_fails_closed(stage, registered, candidates_dir, tmp_path, monkeypatch):
    """An exception in any stage: flow run Failed, summary.json verdict "error" and
    complete false (never "pass"), partial results of the stages that ran are kept."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"verdict": "pass"}))  # a stale earlier pass
    (out / "report.html").write_text("<p>stale PASS</p>")
    _inject(monkeypatch, stage)
    state = run_audit(candidates_dir[0], registered["db"], out)
    assert state.is_failed()
    summary = read_summary(out)
    assert summary["verdict"] == "error"
    assert summary["complete"] is False
    assert "injected failure" in summary["reason"]
    report = out / "report.html"
    assert not report.exists() or "stale PASS" not in report.read_text()
    if stage in ("gate", "render-report", "record-audit"):  # verification ran: its rows are kept
        assert len((out / "verdicts.csv").read_text().splitlines()) == 1 + 8
    if stage == "record-audit":  # the counts the gate reached stay visible, marked incomplete
        assert sum(summary["counts"][k] for k in ("duplicate", "similar", "different")) == 8


def test_failing_report_still_leaves_error_summary(registered, candidates_dir, tmp_path, monkeypatch):
    """The report renderer failing on the error path too must not lose summary.json."""
    _inject(monkeypatch, "render-report")
    state = run_audit(candidates_dir[0], registered["db"], tmp_path / "out")
    assert state.is_failed()
    assert read_summary(tmp_path / "out")["verdict"] == "error"
    assert not (tmp_path / "out" / "report.html").exists()


def test_cli_exits_4_on_stage_error(registered, candidates_dir, tmp_path, monkeypatch):
    """The CLI turns a failed audit into exit 4 with the reason, never 0."""
    from typer.testing import CliRunner

    from flows.cli import app

    _inject(monkeypatch, "search")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["audit", str(candidates_dir[0]), "--cohort", COHORT, "--out", str(out),
                                      "--db", registered["db"], "--device", "cpu"])
    assert result.exit_code == 4, result.output
    assert "injected failure" in result.output
    assert read_summary(out)["verdict"] == "error"


def test_publish_artifacts_is_retried_on_a_transient_error(registered, candidates_dir, tmp_path, monkeypatch):
    """A one-off Prefect API error while publishing artifacts is retried: the audit still
    reaches its verdict (fail: the candidates hold copies)."""
    import prefect.artifacts

    real = prefect.artifacts.create_markdown_artifact
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("transient API error")
        return real(*args, **kwargs)

    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", flaky)
    run_audit(candidates_dir[0], registered["db"], tmp_path / "out")
    assert len(calls) == 2
    summary = read_summary(tmp_path / "out")
    assert summary["verdict"] in ("pass", "fail") and summary["complete"] is True


# ----------------------------------------------------------------------------- determinism
def test_same_inputs_give_byte_identical_outputs(registered, candidates_dir, tmp_path):
    """Two audits of the same inputs: identical CSVs and summary.json apart from ``run``."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        run_audit(candidates_dir[0], registered["db"], out, verify=True)  # the alignment search too
    for name in CONTRACT_FILES:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    summaries = [read_summary(out) for out in outs]
    assert summaries[0]["run"]["audit_id"] != summaries[1]["run"]["audit_id"]
    for s in summaries:
        s.pop("run")
    assert summaries[0] == summaries[1]
    assert summaries[0]["verdict"] == "fail"
    assert len((outs[0] / "verdicts.csv").read_text().splitlines()) == 1 + 8


# ----------------------------------------------------------------------------- crash safety
@pytest.fixture(scope="module")
def registration_inputs(registered, train_dir, others_dir, tmp_path_factory) -> dict:
    """Inputs for a second registration of cohort ``train`` that adds 4 images: the
    ingested manifest and pixels, and the embedding of every row (so the subprocess needs
    no torch)."""
    from deepssim.metric.checkpoint import DEFAULT_MODEL
    from deepssim.config import IngestConfig
    from deepssim.io import ingest
    from deepssim.audit.pipeline import embed_pixels, write_manifest

    work = tmp_path_factory.mktemp("registration-v2")
    folder = work / "cohort"
    shutil.copytree(train_dir, folder)
    shutil.copytree(others_dir, folder / "extra")
    result = ingest([folder], IngestConfig(), 128, work / "ingest")
    manifest = write_manifest(result.manifest, work / "ingest")
    rows = np.arange(len(result.ok))
    embeddings = embed_pixels(result.pixels_path, rows, DEFAULT_MODEL, work / "all-embeddings.npy", "cpu")
    return {"manifest": str(manifest), "pixels": str(result.pixels_path), "embeddings": str(embeddings),
            "images": len(result.ok)}


def _copy_store(registered: dict, dest: Path) -> str:
    """A private copy of the registered store (database + pixel shards)."""
    dest.mkdir()
    src = Path(registered["db"])
    for path in src.parent.iterdir():
        if path.name.startswith(src.name):
            (shutil.copytree if path.is_dir() else shutil.copy)(path, dest / path.name)
    return str(dest / src.name)


def _helper(db: str, registered: dict, inputs: dict, work: Path, pause: str, env: dict) -> subprocess.Popen:
    work.mkdir(exist_ok=True)
    cmd = [sys.executable, str(HELPERS / "crash_register.py"), "--db", db, "--cohort", COHORT,
           "--manifest", inputs["manifest"], "--pixels", inputs["pixels"], "--embeddings", inputs["embeddings"],
           "--model-id", registered["model_id"], "--work", str(work), "--pause", pause]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if marker in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"helper exited before {marker}: {proc.stderr.read()[-2000:]}")
    raise AssertionError(f"helper never reached {marker}")


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _check_cohort(db: str, allowed: set[int]) -> int:
    """The cohort is complete: its size is one of ``allowed``, every image has an
    embedding under the model and a readable pixel row.  Returns its size."""
    from deepssim.store.database import Store

    with Store(db, wait_s=10) as store:
        images = store.cohort_images(COHORT)
        model_id = store.models()["model_id"].iloc[0]
        assert len(store.missing_cohort_embeddings(COHORT, model_id)) == 0
        assert len(store.cohort_embeddings(COHORT, model_id)) == len(images)
        pixels = store.load_pixels(images)
    assert len(images) in allowed, len(images)
    assert pixels.shape == (len(images), 128, 128)
    assert (pixels.reshape(len(images), -1).max(axis=1) > 0).all()  # real rows, not zero-filled holes
    return len(images)


@pytest.mark.parametrize("pause", ["after_shard", "in_transaction"])
def test_kill9_during_registration_keeps_old_cohort_then_rerun_completes(
        pause, registered, registration_inputs, tmp_path, prefect_harness):
    """SIGKILL after the pixel shard is written / inside the DB transaction: the cohort is
    still the old one (8 images, complete); a rerun registers the new one (12)."""
    env = subprocess_env(prefect_harness)
    db = _copy_store(registered, tmp_path / "store")
    proc = _helper(db, registered, registration_inputs, tmp_path / "w1", pause, env)
    _wait_for(proc, f"PAUSED {pause}")
    _kill9(proc)
    assert _check_cohort(db, {8}) == 8
    rerun = _helper(db, registered, registration_inputs, tmp_path / "w2", "none", env)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0 and "DONE" in out, err[-2000:]
    assert _check_cohort(db, {registration_inputs["images"]}) == 12


def test_kill9_at_random_moments_leaves_old_or_new_cohort(registered, registration_inputs, tmp_path,
                                                          prefect_harness):
    """SIGKILL at random delays into a registration: old (8) or complete new (12), never
    in between, every time; a final rerun completes."""
    env = subprocess_env(prefect_harness)
    db = _copy_store(registered, tmp_path / "store")
    rng = random.Random(os.environ.get("DEEPSSIM_CRASH_SEED", "8"))
    for attempt in range(3):
        proc = _helper(db, registered, registration_inputs, tmp_path / f"w{attempt}", "none", env)
        time.sleep(rng.uniform(0.5, 3.0))
        if proc.poll() is None:
            _kill9(proc)
        _check_cohort(db, {8, 12})
    rerun = _helper(db, registered, registration_inputs, tmp_path / "final", "none", env)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err[-2000:]
    assert _check_cohort(db, {12}) == 12


def test_kill9_while_recording_an_audit_records_nothing(registered, registration_inputs, tmp_path,
                                                       prefect_harness):
    """The audit row and its results are one transaction: killed inside it, neither exists."""
    from deepssim.store.database import Store

    db = _copy_store(registered, tmp_path / "store")
    proc = _helper(db, registered, registration_inputs, tmp_path / "w", "in_audit_record",
                   subprocess_env(prefect_harness))
    _wait_for(proc, "PAUSED in_audit_record")
    _kill9(proc)
    with Store(db, wait_s=10) as store:
        assert "crash-audit" not in set(store.audits()["audit_id"])
        assert len(store.audit_results("crash-audit")) == 0


# ----------------------------------------------------------------------------- concurrency
def _cli_audit(candidates: Path, db: str, out: Path, env: dict, wait: float) -> subprocess.Popen:
    cmd = [str(DEEPSSIM), "audit", str(candidates), "--cohort", COHORT, "--out", str(out), "--db", db,
           "--device", "cpu", "--wait", str(wait), "--no-verify"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_audits_at_once_both_complete(registered, candidates_dir, tmp_path, prefect_harness):
    """Two ``deepssim audit`` processes against one store: the stages hold the database
    for milliseconds, so both finish with the real verdict and both are recorded."""
    from deepssim.store.database import Store

    db = _copy_store(registered, tmp_path / "store")
    env = subprocess_env(prefect_harness)
    procs = [_cli_audit(candidates_dir[0], db, tmp_path / f"out{i}", env, wait=120) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode in (0, 1), (out, err[-3000:])
    summaries = [read_summary(tmp_path / f"out{i}") for i in range(2)]
    assert all(s["complete"] for s in summaries)
    assert summaries[0]["verdict"] == summaries[1]["verdict"] == ("pass", "fail")[procs[0].returncode]
    assert summaries[0]["counts"] == summaries[1]["counts"]
    with Store(db, wait_s=10) as store:  # the copied store also holds earlier tests' audits
        recorded = store.audits(limit=10_000).set_index("audit_id")
    ids = [s["run"]["audit_id"] for s in summaries]
    assert set(ids) <= set(recorded.index)
    assert recorded.loc[ids, "complete"].all()


def test_busy_store_exits_4_with_a_clear_message(registered, candidates_dir, tmp_path, prefect_harness):
    """A store held by another process past ``--wait``: exit 4, a "busy" message, no
    DuckDB lock traceback, summary.json "error", and the store is intact afterwards."""
    db = _copy_store(registered, tmp_path / "store")
    env = subprocess_env(prefect_harness)
    holder = subprocess.Popen([sys.executable, str(HELPERS / "hold_store.py"), db], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        _wait_for(holder, "HELD")
        proc = _cli_audit(candidates_dir[0], db, tmp_path / "out", env, wait=1)
        out, err = proc.communicate(timeout=300)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert proc.returncode == 4, (out, err[-3000:])
    assert "busy" in err and "--wait" in err
    for raw in ("IOException", "Could not set lock", "Conflicting lock", "duckdb."):
        assert raw not in out + err
    summary = read_summary(tmp_path / "out")
    assert summary["verdict"] == "error" and "busy" in summary["reason"]
    assert _check_cohort(db, {8}) == 8
