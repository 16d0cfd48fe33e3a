"""The governance board's audit trail: every audit's files kept in the store and exported
byte for byte, run folders of the scheduled gate, identifiers kept out of Prefect."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, REPO, SAMPLE_DATA, TRAIN_SUBJECTS

pytestmark = [pytest.mark.prefect, pytest.mark.slow]
DEEPSSIM = Path(sys.executable).with_name("deepssim")
# cohort folders named the way hospitals name them: patient name, birth date, record number
PATIENT_FOLDERS = {"nibabel_anatomical": "DOE_JANE_19570312", "prad_ct_lung2": "SMITH_JOHN_MRN4711"}
FAST = {"device": "cpu", "store_wait_s": 30}


@pytest.fixture(scope="module")
def store(tmp_path_factory, prefect_harness) -> dict:
    """A cohort registered from patient-named folders, and candidates with copies of it."""
    from flows.register_cohort import register_cohort

    root = tmp_path_factory.mktemp("trail")
    train = root / "train"
    for subject, names in TRAIN_SUBJECTS.items():
        (train / PATIENT_FOLDERS[subject]).mkdir(parents=True)
        for name in names:
            shutil.copy(SAMPLE_DATA / "train" / subject / name, train / PATIENT_FOLDERS[subject] / name)
    copies = root / "copies"
    copies.mkdir()
    for subject, names in TRAIN_SUBJECTS.items():
        shutil.copy(SAMPLE_DATA / "train" / subject / names[1], copies / f"copy_{names[1]}")
    others = root / "others"
    others.mkdir()
    for name in ("synthetic_006.png", "synthetic_010.png"):
        shutil.copy(SAMPLE_DATA / "candidates" / name, others / name)
    db = str(root / "gate.duckdb")
    register_cohort(name="patients", paths=[str(train)], db=db, settings=FAST)
    return {"root": root, "db": db, "copies": copies, "others": others}


def _audit(candidates: Path, db: str, out: Path, **kwargs):
    from flows.audit import audit

    return audit(candidates=[str(candidates)], cohort="patients", out_dir=str(out), db=db,
                 settings={**FAST, "verification": {"enabled": False}}, return_state=True, **kwargs)


def _cli(*args, api_url: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **OFFLINE_ENV, **({"PREFECT_API_URL": api_url} if api_url else {})}
    return subprocess.run([str(DEEPSSIM), *map(str, args)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_two_cli_audits_into_one_folder_are_both_exported_byte_for_byte(store, tmp_path, prefect_harness):
    out = tmp_path / "out"
    common = ["--cohort", "patients", "--db", store["db"], "--out", out, "--no-verify", "--device", "cpu"]
    first = _cli("audit", store["copies"], *common, api_url=prefect_harness, timeout=300)
    assert first.returncode == 1, first.stdout + first.stderr  # the copies fail the gate
    written = {name: (out / name).read_bytes() for name in ("summary.json", "verdicts.csv", "report.html")}
    second = _cli("audit", store["others"], *common, api_url=prefect_harness, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr  # and replace the folder's files
    first_id = json.loads(written["summary.json"])["run"]["audit_id"]
    listed = _cli("audits", "list", "--db", store["db"])
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:5] == ["audit_id", "finished_utc", "cohort", "candidates", "verdict"]
    mine = [line for line in lines if first_id in line]
    assert len(mine) == 1 and " fail " in mine[0] and "kept" in mine[0]
    exported = tmp_path / "export"
    done = _cli("audits", "export", first_id, "--out", exported, "--db", store["db"])
    assert done.returncode == 0, done.stderr
    for name, content in written.items():
        assert (exported / name).read_bytes() == content, name
    assert json.loads((out / "summary.json").read_text())["verdict"] == "pass"  # the folder holds run 2
    unknown = _cli("audits", "export", "nope", "--out", exported, "--db", store["db"])
    assert unknown.returncode == 2 and "unknown audit 'nope'" in unknown.stderr


def test_run_folders_point_latest_and_prune_only_what_the_store_keeps(store, tmp_path):
    from test_security import _LogCapture

    root = tmp_path / "gate"
    _audit(store["copies"], store["db"], root, run_folders=True)
    first = next(p for p in root.iterdir() if not p.is_symlink())
    first_report = (first / "report.html").read_bytes()
    assert (root / "latest").resolve() == first.resolve()
    with _LogCapture() as capture:
        _audit(store["others"], store["db"], root, run_folders=True, keep_runs=1)
    folders = [p for p in root.iterdir() if not p.is_symlink()]
    assert len(folders) == 1 and folders[0] != first  # the older run was removed from disk ...
    assert (root / "latest").resolve() == folders[0].resolve()
    assert json.loads((root / "latest" / "summary.json").read_text())["verdict"] == "pass"
    audit_id = first.name.split("-", 1)[1]
    assert any(f"removed run folder {first.name}" in line for line in capture.lines)
    from deepssim.store.database import Store

    with Store(store["db"], read_only=True) as s:  # ... and is still in the store
        assert s.audit_files(audit_id)["report.html"] == first_report


def test_a_failed_gate_is_logged_as_a_verdict_and_an_error_keeps_its_traceback():
    """The engine's "exited with unexpected exception" record for a flow run that ended
    Failed: for the gate's GateFailed it is one INFO line, for any other error unchanged."""
    from flows.audit import GateFailed

    import warnings

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record):
            self.records.append(record)

    engine, seen = logging.getLogger("prefect.flow_runs"), Records()
    engine.addHandler(seen)
    try:
        with warnings.catch_warnings():  # "no flow run id" from Prefect's API handler
            warnings.simplefilter("ignore")
            for exc in (GateFailed("DeepSSIM gate FAIL: 1 duplicate", {}), ValueError("a real bug")):
                try:
                    raise exc
                except Exception:
                    engine.error("Engine execution exited with unexpected exception", exc_info=True)
    finally:
        engine.removeHandler(seen)
    verdict, error = seen.records[-2:]
    assert verdict.levelno == logging.INFO and verdict.exc_info is None
    assert verdict.getMessage() == "gate verdict (not an error): DeepSSIM gate FAIL: 1 duplicate"
    assert error.levelno == logging.ERROR and isinstance(error.exc_info[1], ValueError)


def _run_texts(flow_run_id) -> list[str]:
    """This flow run's artifacts, logs, name, parameters and state message, from Prefect."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        run = client.read_flow_run(flow_run_id)
    return ([json.dumps(a.data, default=str) + str(a.description) for a in artifacts] + [g.message for g in logs]
            + [run.name, json.dumps(run.parameters, default=str), str(run.state.message)])


def test_patient_like_folder_names_stay_out_of_artifacts_logs_and_run_states(store, tmp_path):
    from deepssim.audit.outputs import image_ref
    from test_security import _LogCapture

    with _LogCapture() as capture:
        state = _audit(store["copies"], store["db"], tmp_path / "out")
    assert state.is_failed()
    verdicts = (tmp_path / "out" / "verdicts.csv").read_text()
    assert all(name in verdicts for name in PATIENT_FOLDERS.values())  # the local outputs may show them
    texts = _run_texts(state.state_details.flow_run_id) + capture.lines
    nearest = f"{PATIENT_FOLDERS['nibabel_anatomical']}/{TRAIN_SUBJECTS['nibabel_anatomical'][1]}"
    assert any(image_ref(nearest) in t for t in texts)  # the scan sees the run's top matches
    assert capture.lines and len(texts) > 5
    leaks = [(name, text[:200]) for text in texts for name in PATIENT_FOLDERS.values() if name in text]
    assert not leaks, leaks
