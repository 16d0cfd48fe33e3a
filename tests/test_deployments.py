"""The Prefect deployments end to end, against a real local Prefect server:
``deployments/prefect.yaml`` deployed with ``deployments/deploy.py``, a process worker,
a cohort registration whose event triggers ``retrain-on-new-cohort``, then the
``release-gate`` deployment run with parameters and its artifacts read back from the API.

Every process started here is killed in ``finally``; every wait is bounded.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import OTHER_SUBJECTS

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "deepssim" / "sample_data"
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
TINY_RETRAIN = {"steps": 1, "time_budget_s": None, "batch_size": 8, "eval_every": 1, "eval_pairs": 32,
                "train_phantom_volumes": 1, "val_phantom_volumes": 2, "eval_phantom_volumes": 2,
                "benchmark_per_kind": 0, "device": "cpu"}

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen | None) -> None:
    """Kill a process we started and its children (it leads its own session)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


RETRIES, RETRY_STATUSES = 5, (429, 502, 503)


class Api:
    """A few REST calls on the Prefect server (no client settings involved)."""

    def __init__(self, url: str):
        import httpx

        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def healthy(self) -> bool:
        try:
            return self.http.get("/health").status_code == 200
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def post(self, path: str, body: dict) -> dict | list:
        return self._send("POST", path, body)

    def get(self, path: str) -> dict:
        return self._send("GET", path)

    def _send(self, method: str, path: str, body: dict | None = None) -> dict | list:
        """One request, retried like Prefect's own client does on 429/502/503: the server
        answers 503 while its SQLite database is locked by a run writing beside it."""
        for attempt in range(RETRIES):
            r = self.http.request(method, path, json=body)
            if r.status_code not in RETRY_STATUSES or attempt == RETRIES - 1:
                break
            time.sleep(2 ** attempt)
        r.raise_for_status()
        return r.json()

    def deployment(self, flow: str, name: str) -> dict:
        return self.get(f"/deployments/name/{flow}/{name}")

    def runs_of(self, deployment_id: str) -> list[dict]:
        return self.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})

    def artifacts(self, flow_run_id: str) -> dict[str, dict]:
        rows = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {a["key"]: a for a in rows if a.get("key")}


def _wait(predicate, timeout: float, what: str, step: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _wait_terminal(api: Api, run_id: str, timeout: float) -> dict:
    def done():
        run = api.get(f"/flow_runs/{run_id}")
        return run if run["state_type"] in TERMINAL else None

    return _wait(done, timeout, f"flow run {run_id} to finish", 3.0)


def _tiny_prefect_file(tmp: Path) -> Path:
    """``deployments/prefect.yaml`` with tiny retraining settings (CI time)."""
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        if d["name"] == "retrain-on-new-cohort":
            d["parameters"]["settings"] = TINY_RETRAIN
    path = tmp / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _register(name: str, src: Path, db: Path, env: dict) -> None:
    done = subprocess.run([str(BIN / "deepssim"), "cohort", "register", name, str(src), "--db", str(db),
                           "--device", "cpu"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"registered cohort {name}: "), done.stdout  # a sentence, not a dict


def test_release_gate_and_event_driven_retraining(tmp_path):
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false",
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"), "PREFECT_LOGGING_LEVEL": "INFO",
           "DEEPSSIM_HOME": str(tmp_path / "home"), "DEEPSSIM_DB": str(tmp_path / "gate.duckdb"),
           "DEEPSSIM_COHORT": "gate-train", "DEEPSSIM_CANDIDATES": str(SAMPLE / "candidates"),
           "DEEPSSIM_OUT": str(tmp_path / "gate-out"), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    db = tmp_path / "gate.duckdb"
    server = worker = None
    api = Api(api_url)
    try:
        server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                        env, tmp_path / "server.log")
        _wait(api.healthy, 120, "the Prefect server")
        done = subprocess.run([sys.executable, "deployments/deploy.py", "--prefect-file",
                               str(_tiny_prefect_file(tmp_path))], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        gate = api.deployment("audit", "release-gate")
        retrain = api.deployment("retrain", "retrain-on-new-cohort")
        assert gate["global_concurrency_limit"]["limit"] == 1 == retrain["global_concurrency_limit"]["limit"]
        assert gate["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        assert gate["parameters"]["cohort"] == "gate-train" and gate["parameters"]["db"] == str(db)
        assert gate["parameters"]["run_folders"] is True
        # the retrain's event trigger is an automation (the README sends users to Automations)
        automations = api.post("/automations/filter", {})
        runs_retrain = [a for a in automations for action in a["actions"]
                        if action.get("deployment_id") == retrain["id"]]
        assert len(runs_retrain) == 1 and "deepssim.cohort.registered" in json.dumps(runs_retrain[0]["trigger"])

        worker = _start([str(BIN / "prefect"), "worker", "start", "--pool", "deepssim-process"],
                        env, tmp_path / "worker.log")

        # registering the cohort emits deepssim.cohort.registered -> a retrain-on-new-cohort run
        _register("gate-train", SAMPLE / "train", db, env)
        runs = _wait(lambda: api.runs_of(retrain["id"]), 90, "the event-triggered retrain run")
        assert len(runs) == 1
        assert runs[0]["parameters"]["cohort"] == "gate-train" and runs[0]["parameters"]["db"] == str(db)
        final = _wait_terminal(api, runs[0]["id"], 300)
        assert final["state_type"] == "COMPLETED", final["state"]
        assert {"deepssim-model-registry", "deepssim-training-progress"} <= set(api.artifacts(runs[0]["id"]))

        # the scheduled gate, run now with parameters: FAIL (planted copies), then PASS
        # (other subjects only); each run keeps its own folder, report and artifacts
        out_root = tmp_path / "gate-runs"
        params = {"out_dir": str(out_root), "settings": {"verification": {"enabled": False}}}
        run = api.post(f"/deployments/{gate['id']}/create_flow_run", {"parameters": params})
        final = _wait_terminal(api, run["id"], 300)
        assert final["state_type"] == "FAILED", final["state"]
        assert "DeepSSIM gate FAIL" in (final["state"].get("message") or "")
        clean = tmp_path / "clean"
        clean.mkdir()
        for name in OTHER_SUBJECTS:
            shutil.copy(SAMPLE / "candidates" / name, clean / name)
        passing = api.post(f"/deployments/{gate['id']}/create_flow_run",
                           {"parameters": {**params, "candidates": [str(clean)]}})
        assert _wait_terminal(api, passing["id"], 300)["state_type"] == "COMPLETED"
        folders = sorted(p for p in out_root.iterdir() if not p.is_symlink())
        assert len(folders) == 2 and (out_root / "latest").resolve() == folders[1].resolve()
        verdicts = [json.loads((f / "summary.json").read_text())["verdict"] for f in folders]
        assert verdicts == ["fail", "pass"]
        for flow_run, folder in ((run, folders[0]), (passing, folders[1])):
            link = api.artifacts(flow_run["id"])["deepssim-report"]["data"]
            assert (folder / "report.html").resolve().as_uri() in link
            name = api.get(f"/flow_runs/{flow_run['id']}")["name"]
            assert name.startswith("gate gate-train <- ") and name.endswith((": FAIL", ": PASS")), name
        audit_id = folders[0].name.split("-", 1)[1]
        export = tmp_path / "export"
        done = subprocess.run([str(BIN / "deepssim"), "audits", "export", audit_id, "--out", str(export),
                               "--db", str(db)], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        for name in ("summary.json", "verdicts.csv", "report.html"):
            assert (export / name).read_bytes() == (folders[0] / name).read_bytes(), name
        worker_log = (tmp_path / "worker.log").read_text(errors="replace")
        assert "Traceback" not in worker_log and "unexpected exception" not in worker_log, worker_log[-3000:]
        assert "gate verdict (not an error)" in worker_log
        # a real error (unknown cohort) still fails the run with its traceback in the log
        broken = api.post(f"/deployments/{gate['id']}/create_flow_run",
                          {"parameters": {**params, "cohort": "no-such-cohort"}})
        assert _wait_terminal(api, broken["id"], 300)["state_type"] == "FAILED"
        _wait(lambda: "Traceback" in (tmp_path / "worker.log").read_text(errors="replace"), 30,
              "the error run's traceback in the worker log")
        summary = json.loads((folders[0] / "summary.json").read_text())
        assert summary["verdict"] == "fail" and summary["counts"]["duplicate"] >= 1
        artifacts = api.artifacts(run["id"])
        assert {"deepssim-gate-summary", "deepssim-audit-history", "deepssim-model-registry"} <= set(artifacts)
        history = artifacts["deepssim-audit-history"]["data"]
        history = json.loads(history) if isinstance(history, str) else history
        assert history[0]["cohort"] == "gate-train" and history[0]["verdict"] == "fail"
        registry = artifacts["deepssim-model-registry"]["data"]
        registry = json.loads(registry) if isinstance(registry, str) else registry
        statuses = sorted(r["status"] for r in registry)  # the shipped model + the retrain's challenger
        assert len(registry) == 2 and statuses in (["challenger", "champion"], ["champion", "retired"])
        # the shipped model too: its parent from its training record, its evaluation as champion
        assert all(r["parent"] and r["mae_augmented"] is not None for r in registry), registry
        assert history[0]["model_id"] in {r["model_id"] for r in registry if r["status"] == "champion"}
    finally:
        _stop(worker)
        _stop(server)
        for name in ("server.log", "worker.log"):
            log = tmp_path / name
            if log.exists():
                print(f"--- {name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
