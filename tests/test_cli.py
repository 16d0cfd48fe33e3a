"""The ``deepssim`` command line, run as a user runs it: a subprocess of the venv's script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import OFFLINE_ENV, REPO, SAMPLE_DATA

DEEPSSIM = Path(sys.executable).with_name("deepssim")
TRAIN_SLICE = SAMPLE_DATA / "train" / "nibabel_anatomical" / "nibabel_anatomical_v0_s010.png"


def _env(api_url: str | None = None, home: Path | None = None) -> dict:
    env = {**os.environ, **OFFLINE_ENV}
    if api_url:  # share the session's harness server instead of starting an ephemeral one
        env["PREFECT_API_URL"] = api_url
    if home:
        env["DEEPSSIM_HOME"] = str(home)
    return env


def _run(args: list, env: dict, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def flipped(tmp_path_factory) -> Path:
    """A horizontally flipped copy of a real training slice."""
    path = tmp_path_factory.mktemp("cli") / "flipped.png"
    Image.fromarray(np.fliplr(np.asarray(Image.open(TRAIN_SLICE).convert("L")))).save(path)
    return path


def test_usage_lines_name_arguments_not_python_types(tmp_path):
    for command in (["cohort", "register"], ["audit"], ["audits", "export"]):
        proc = _run([DEEPSSIM, *command, "--help"], _env(home=tmp_path), timeout=60)
        usage = next(line for line in proc.stdout.splitlines() if "Usage:" in line)
        assert "list[" not in usage and "Path" not in usage and ("PATHS" in usage or "AUDIT_ID" in usage), usage


def test_help_imports_neither_torch_nor_prefect(tmp_path):
    proc = _run([sys.executable, "-X", "importtime", "-m", "flows.cli", "--help"], _env(home=tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "audit" in proc.stdout and "cohort" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "typer" in imported  # importtime really listed the imports
    heavy = sorted(m for m in imported if m.split(".")[0] in {"torch", "prefect", "monai", "great_expectations"})
    assert heavy == []


def test_audit_of_a_missing_path_is_a_usage_error(tmp_path):
    proc = _run([DEEPSSIM, "audit", tmp_path / "absent", "--cohort", "c", "--db", tmp_path / "g.duckdb",
                 "--out", tmp_path / "out"], _env(home=tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "absent" in proc.stderr


def test_audit_with_inconsistent_thresholds_is_a_usage_error(tmp_path):
    proc = _run([DEEPSSIM, "audit", SAMPLE_DATA / "candidates", "--cohort", "c", "--similar", "0.9",
                 "--duplicate", "0.8", "--db", tmp_path / "g.duckdb", "--out", tmp_path / "out"],
                _env(home=tmp_path))
    assert proc.returncode == 2, proc.stderr


@pytest.mark.parametrize("command", [["audit", SAMPLE_DATA / "candidates", "--cohort", "c"],
                                     ["cohort", "register", "c", SAMPLE_DATA / "train"],
                                     ["score", TRAIN_SLICE, TRAIN_SLICE]])
def test_unknown_precision_is_a_usage_error(tmp_path, command):
    proc = _run([DEEPSSIM, *command, "--precision", "float16", *(["--db", tmp_path / "g.duckdb"] if command[0] != "score" else [])],
                _env(home=tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "precision must be one of auto, float32, bfloat16" in proc.stderr


def test_negative_verify_workers_is_a_usage_error(tmp_path):
    proc = _run([DEEPSSIM, "audit", SAMPLE_DATA / "candidates", "--cohort", "c", "--verify-workers", "-1",
                 "--db", tmp_path / "g.duckdb", "--out", tmp_path / "out"], _env(home=tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "verification workers must be >= 0" in proc.stderr
    assert not (tmp_path / "out" / "summary.json").exists()  # refused before anything ran


def test_audit_against_an_unknown_cohort_or_store_is_a_usage_error_up_front(tmp_path):
    """A typo in --cohort, a missing store or checkpoint: exit 2 with one line, before any
    image is read (no output folder, no flow run, no traceback)."""
    from deepssim.store.database import Store

    db = tmp_path / "g.duckdb"
    with Store(db) as store:  # an empty, valid store: no cohorts registered
        assert store.cohorts().empty
    out = tmp_path / "out"
    cases = {"unknown cohort 'no-such-cohort' (registered: none)": ["--db", db],
             "no store at": ["--db", tmp_path / "missing.duckdb"],
             "no model checkpoint at": ["--db", db, "--model", tmp_path / "nope.pt"]}
    for expected, extra in cases.items():
        proc = _run([DEEPSSIM, "audit", TRAIN_SLICE, "--cohort", "no-such-cohort", "--out", out, *extra],
                    _env(home=tmp_path), timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
        assert not out.exists()


@pytest.mark.prefect
@pytest.mark.slow
def test_the_audit_flow_against_an_unknown_cohort_is_an_error_never_a_pass(tmp_path, prefect_harness,
                                                                         others_dir):
    """Through a deployment (no CLI check in front) the flow still fails closed."""
    from flows.audit import audit

    out = tmp_path / "out"
    state = audit(candidates=[str(others_dir)], cohort="no-such-cohort", out_dir=str(out),
                  db=str(tmp_path / "g.duckdb"), return_state=True)
    assert state.is_failed()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "error" and summary["complete"] is False
    assert "unknown cohort" in summary["reason"]


def test_score_of_a_flipped_copy_is_a_duplicate(flipped, tmp_path):
    proc = _run([DEEPSSIM, "score", TRAIN_SLICE, flipped, "--device", "cpu"], _env(home=tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) > 0.85


def test_score_pairs_writes_a_score_column(flipped, tmp_path):
    other = SAMPLE_DATA / "candidates" / "synthetic_010.png"
    pairs = flipped.parent / "pairs.csv"
    pd.DataFrame({"a": [str(TRAIN_SLICE), "flipped.png", str(TRAIN_SLICE)],
                  "b": [str(TRAIN_SLICE), str(TRAIN_SLICE), str(other)]}).to_csv(pairs, index=False)
    out = tmp_path / "scored.csv"
    proc = _run([DEEPSSIM, "score", "--pairs", pairs, "--out", out, "--device", "cpu"], _env(home=tmp_path))
    assert proc.returncode == 0, proc.stderr
    scored = pd.read_csv(out)
    assert list(scored.columns) == ["a", "b", "score"] and len(scored) == 3
    same, copy, unrelated = scored["score"]
    assert same == pytest.approx(1.0, abs=1e-4)
    assert copy > 0.85 and unrelated < copy
