"""The audit flow: candidate dataset -> verdicts, gate decision, report, artifacts.

A failed gate ends the flow run in a ``Failed`` state whose message says why and whose result
is a :class:`GateFailed` exception carrying the outcome (so ``audit(...)`` called directly
raises it, and Prefect's engine and workers can resolve the state); a pass completes with the
outcome.  :func:`audit_outcome` reads the outcome from a flow run's state either way.  Any exception is recorded as verdict
``error`` (never ``pass``) before the flow run fails.
"""
from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Failed

from deepssim.config import AuditSettings
from deepssim.audit import (image_ref, ok_rows, point_latest, prune_run_folders, read_manifest,
                            run_folder_audit_id, run_folder_audit_ids, run_folder_name, summary_text,
                            write_summary)
from tasks.audit import gate_task, verify_task
from tasks.dashboard import publish_dashboard_task
from tasks.ingest import validate_task
from tasks.report import publish_artifacts_task, render_report_task, write_outputs_task
from tasks.store import record_audit_task, resolve_model_task, search_task

from .common import new_run_id, now_iso, resolve_db, scratch_dir, summary_skeleton
from .runners import DEFAULT_SHARD_FILES, embed_stage, ingest_stage

EXIT_PASS, EXIT_FAIL, EXIT_NOTHING, EXIT_ERROR = 0, 1, 3, 4
STALE_OUTPUTS = ("verdicts.csv", "volumes.csv", "quarantine.csv", "report.html")


class GateFailed(Exception):
    """The gate did not pass (``outcome["verdict"]`` says how): the result of the audit's
    Failed state.  ``outcome`` is the dict a passing audit returns."""

    def __init__(self, message: str, outcome: dict):
        super().__init__(message, outcome)  # both in args: the exception pickles
        self.message, self.outcome = message, outcome

    def __str__(self) -> str:
        return self.message


class _VerdictIsNotACrash(logging.Filter):
    """Prefect's engine logs a flow run that ends Failed as "Engine execution exited with
    unexpected exception", with the traceback of the state's exception.  A failed gate is the
    expected "no", already stated in the run's state message: its record becomes one INFO line
    without a traceback.  Records of real errors (any other exception) are left alone.
    Matched by class name: the worker loads this module from its entrypoint path, so the
    class may exist twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if type(exc).__name__ == GateFailed.__name__:
            record.msg, record.args = "gate verdict (not an error): %s", (str(exc),)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


for _logger in ("prefect.flow_runs", "prefect.engine"):
    logging.getLogger(_logger).addFilter(_VerdictIsNotACrash())


def audit_outcome(state) -> dict:
    """The outcome dict of a finished ``audit`` flow run's state, whether the gate passed or
    not; an audit that raised re-raises its exception."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, GateFailed):
        return result.outcome
    if isinstance(result, BaseException):
        raise result
    return result


def _finish(summary: dict, out_dir: str, db: str, settings: AuditSettings, paths: dict) -> dict:
    """Write outputs + report, publish artifacts, record the audit; return file paths."""
    summary["run"]["finished_at"] = now_iso()
    # summary.json is written twice: first as "error/incomplete", and with the real verdict
    # only once the report, artifacts and store record exist — a crash in between never
    # leaves a "pass" on disk for an audit that did not finish.
    pending = summary if summary["verdict"] == "error" else {
        **summary, "verdict": "error", "complete": False, "reason": "audit interrupted while writing its outputs"}
    files = write_outputs_task(out_dir, pending, paths.get("verdicts"), paths.get("volumes"), paths.get("manifest"))
    files["verdicts_internal"] = paths.get("verdicts")
    report = render_report_task(out_dir, summary, files, paths.get("pixels"), paths.get("search"), settings)
    publish_artifacts_task(summary, files["verdicts"], report, db=db)
    audit_row = {"audit_id": summary["run"]["audit_id"], "started_at": summary["run"]["started_at"],
                 "finished_at": summary["run"]["finished_at"], "cohort": summary["cohort"]["name"],
                 "model_id": summary["model"].get("model_id", "unknown"),
                 "candidate_root": summary["candidate_root"], "thresholds": summary["thresholds"],
                 "policy": summary["policy"], "settings": summary["settings"], "verdict": summary["verdict"],
                 "counts": summary["counts"], "volume_counts": summary["volume_counts"],
                 "reasons": summary.get("reasons", []), "complete": summary["complete"]}
    kept = {"verdicts.csv": files["verdicts"], "volumes.csv": files["volumes"],
            "quarantine.csv": files["quarantine"], "report.html": report}
    record_audit_task(db, audit_row, files["verdicts"], settings.store_wait_s, kept, summary_text(summary))
    try:
        publish_dashboard_task(db, settings.store_wait_s)
    except Exception:  # the dashboard is a convenience: the verdict must not depend on it
        get_run_logger().warning("could not publish the dashboard artifacts")
    write_summary(summary, Path(files["summary"]))
    return {**files, "report": report}


def _mark_started(out_dir: str, summary: dict) -> None:
    """Replace a previous run's outputs by an "error / incomplete" summary before any stage
    runs, so a killed audit never leaves an older "pass" (or its report) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in STALE_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    write_summary(summary, out / "summary.json")


def _outcome(summary: dict, files: dict, exit_code: int) -> dict:
    return {"verdict": summary["verdict"], "reason": summary["reason"], "counts": summary["counts"],
            "exit_code": exit_code, "audit_id": summary["run"]["audit_id"],
            "report": files.get("report"), "out_dir": str(Path(files.get("summary", ".")).parent)}


def _failure_message(summary: dict, duplicates: list[str]) -> str:
    """The Failed state's message: verdict, reason, the refs of the worst duplicates and
    the audit id."""
    message = f"DeepSSIM gate {summary['verdict'].upper()}: {summary['reason']}"
    if duplicates:  # opaque refs: a run's state is shown everywhere the UI is
        more = summary["counts"].get("duplicate", len(duplicates)) - len(duplicates)
        message += "; duplicates: " + ", ".join(map(image_ref, duplicates)) + (f" (+{more} more)" if more > 0 else "")
    return message + f"; audit {summary['run']['audit_id']}"


def _run_stages(candidates: list[str], cohort: str, db: str, settings: AuditSettings, model_path: str | None,
                work: Path, summary: dict, paths: dict, root: str | None,
                shard_files: int = DEFAULT_SHARD_FILES) -> int:
    wait = settings.store_wait_s
    model = resolve_model_task(db, model_path, wait)
    summary["model"] = model
    ingested = ingest_stage(candidates, work, settings.ingest, model["input_size"], root, shard_files)
    summary["candidate_root"] = ingested["root"]
    paths["pixels"] = ingested["pixels"]
    validated = validate_task(ingested["manifest"], settings.ingest)
    paths["manifest"] = validated["manifest"]
    summary["validation"] = validated["validation"]
    quarantined = validated["quarantined"]
    if validated["ok"] == 0:
        summary.update(verdict="error",
                       reason=f"nothing auditable: {quarantined} file(s)/slice(s) quarantined, none readable",
                       counts={"duplicate": 0, "similar": 0, "different": 0, "quarantined": quarantined},
                       complete=True)
        return EXIT_NOTHING
    rows = ok_rows(read_manifest(Path(validated["manifest"])))["row"].astype(int).tolist()
    emb_path = embed_stage(ingested["pixels"], rows, model["path"], str(work / "embeddings.npy"),
                           settings.device, settings.batch_size, "candidate embedding",
                           precision=settings.precision)
    from deepssim.metric import inference_settings  # torch: imported only once an audit runs

    # as resolved in this process (a Dask worker with other hardware resolves "auto" itself)
    summary["model"] = {**model, "inference": inference_settings(settings.device, settings.precision)}
    found = search_task(db, cohort, model["model_id"], emb_path, settings.search.k,
                        settings.search.candidate_block, settings.search.cohort_block, wait,
                        str(work / "neighbours.npz"))
    summary["cohort"]["images"] = found["cohort_images"]
    paths["search"] = found
    verified = verify_task(found, validated["manifest"], ingested["pixels"], settings, str(work / "verdicts.parquet"))
    paths["verdicts"] = verified["verdicts"]
    gate = gate_task(verified["verdicts"], settings, quarantined)
    paths["volumes"] = gate["volumes"]
    paths["duplicates"] = gate["duplicates"]  # ids only: named in the Failed state's message
    decision = gate["decision"]
    summary.update(verdict=decision["verdict"], counts=decision["counts"], volume_counts=decision["volume_counts"],
                   reasons=decision["reasons"], complete=True,
                   reason="; ".join(decision["reasons"]) or "no candidate copies a training image under this policy")
    return EXIT_PASS if decision["verdict"] == "pass" else EXIT_FAIL


def run_name() -> str:
    """``gate <cohort> <- <dataset>``: what a run judges, readable in the runs list."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    candidates = [str(c) for c in params.get("candidates") or []]
    dataset = Path(candidates[0]).name if candidates else "nothing"
    if len(candidates) > 1:
        dataset += f" +{len(candidates) - 1}"
    return f"gate {params.get('cohort')} <- {dataset}"


def _name_verdict(summary: dict) -> None:
    """Append the verdict to the run's name (best effort: the verdict is in the state too)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=f"{flow_run.name} : {summary['verdict'].upper()}")
    except Exception:  # noqa: BLE001 - a name is a convenience, never a reason to fail an audit
        get_run_logger().warning("could not add the verdict to the run's name")


def _prune(root: Path, keep: int | None, db: str, wait_s: float) -> None:
    """Remove run folders beyond the newest ``keep``, only those the store can export."""
    if keep is None:
        return
    from deepssim.store import Store

    with Store(db, read_only=True, wait_s=wait_s) as store:
        kept = store.exportable_audits(run_folder_audit_ids(root))
    for folder in prune_run_folders(root, keep, kept.__contains__):
        get_run_logger().info("removed run folder %s (keep_runs=%d); its files stay in the store: "
                              "deepssim audits export %s", folder.name, keep, run_folder_audit_id(folder))


@flow(name="audit", flow_run_name=run_name, persist_result=False, validate_parameters=True)
def audit(candidates: list[str], cohort: str, out_dir: str, db: str | None = None,
          settings: dict | None = None, model_path: str | None = None, root: str | None = None,
          shard_files: int = DEFAULT_SHARD_FILES, run_folders: bool = False, keep_runs: int | None = None):
    """Audit the synthetic images under ``candidates`` against registered ``cohort``.

    Writes verdicts.csv, volumes.csv, quarantine.csv, summary.json and report.html into
    ``out_dir`` — or, with ``run_folders`` (the scheduled gate), into
    ``out_dir/<UTC time>-<audit id>/`` with ``out_dir/latest`` pointing at the newest run;
    ``keep_runs`` then removes the oldest run folders beyond that many, only once the store
    holds their files (``deepssim audits export``), logging each.  Every audit's files are
    kept in the store either way.  Returns the outcome dict (``exit_code`` 0 pass, 1 fail,
    3 nothing auditable); a failing gate returns a Failed state whose result is
    :class:`GateFailed` carrying the same dict.
    On a Dask task runner ingestion and embedding run as shards of ``shard_files`` files.
    """
    log = get_run_logger()
    settings_obj = AuditSettings.from_record(settings)
    db = resolve_db(db)
    summary = summary_skeleton(settings_obj, cohort, str(candidates[0]) if candidates else "", new_run_id())
    paths: dict = {}
    out_root = Path(out_dir)
    if run_folders:
        out_dir = str(out_root / run_folder_name(summary["run"]["started_at"], summary["run"]["audit_id"]))
    _mark_started(out_dir, summary)
    try:
        outcome, exit_code = _audit_into(out_dir, candidates, cohort, db, settings_obj, model_path, root,
                                         shard_files, summary, paths)
    finally:
        if run_folders:
            point_latest(out_root, Path(out_dir))
        _name_verdict(summary)
    if run_folders:
        _prune(out_root, keep_runs, db, settings_obj.store_wait_s)
    log.info("audit %s: %s", summary["run"]["audit_id"], summary["verdict"].upper())
    if exit_code != EXIT_PASS:
        message = _failure_message(summary, paths.get("duplicates") or [])
        return Failed(message=message, data=GateFailed(message, outcome))
    return outcome


def _audit_into(out_dir: str, candidates: list[str], cohort: str, db: str, settings_obj: AuditSettings,
                model_path: str | None, root: str | None, shard_files: int, summary: dict,
                paths: dict) -> tuple[dict, int]:
    """The stages and outputs of one audit into ``out_dir``: (outcome, exit code)."""
    log = get_run_logger()
    with scratch_dir("deepssim-audit-") as work:
        try:
            exit_code = _run_stages(candidates, cohort, db, settings_obj, model_path, work, summary, paths, root,
                                    shard_files)
            files = _finish(summary, out_dir, db, settings_obj, paths)
        except Exception as exc:
            summary.update(verdict="error", complete=False, reason=f"audit failed: {type(exc).__name__}: {exc}")
            log.error("audit failed at a stage; outputs marked incomplete")
            write_summary(summary, Path(out_dir) / "summary.json")  # first: the steps below may fail too
            (Path(out_dir) / "report.html").unlink(missing_ok=True)  # may show a verdict this error voids
            try:
                _finish(summary, out_dir, db, settings_obj, paths)
            except Exception:  # the original error matters more than a failed error report
                log.exception("could not write the error report")
            raise
    return _outcome(summary, files, exit_code), exit_code
