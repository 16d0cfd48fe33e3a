"""The ``deepssim`` command line (typer).  Heavy imports happen inside commands so that
``deepssim --help`` stays instant (no torch, no Prefect).

Exit codes (the contract): 0 gate passed, 1 gate failed, 2 usage error, 3 nothing
auditable / validation failed, 4 any other error.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="DeepSSIM memorization gate: find synthetic images that copy training scans.")
cohort_app = typer.Typer(no_args_is_help=True, help="Register and list training cohorts.")
app.add_typer(cohort_app, name="cohort")

EXIT_ERROR = 4
DB_HELP = "DuckDB store (default: $DEEPSSIM_HOME/deepssim.duckdb, DEEPSSIM_HOME defaults to ~/.deepssim)"
RUNNER_HELP = "thread (default: stages run in this process) | dask (ingest + embed sharded over Dask workers)"
DASK_HELP = "scheduler address of an existing Dask cluster (with --task-runner dask; default: a local cluster)"

# options shared by `cohort register` and `audit`
WaitOption = Annotated[float, typer.Option(help="seconds to wait for a busy store")]
TaskRunnerOption = Annotated[str, typer.Option(help=RUNNER_HELP)]
DaskAddressOption = Annotated[Optional[str], typer.Option(help=DASK_HELP)]
DaskWorkersOption = Annotated[int, typer.Option(help="workers of the local Dask cluster")]
PrecisionOption = Annotated[str, typer.Option(
    help="embedding arithmetic: auto (bfloat16 where the hardware has it natively, else float32) "
         "| float32 | bfloat16")]
ShardSizeOption = Annotated[int, typer.Option(help="files per ingestion shard (dask)")]


def _runner_flow(flow, task_runner: str, dask_address: Optional[str], workers: int):
    """``flow`` on the chosen task runner; a bad choice is a usage error (exit 2)."""
    from flows.runners import with_runner

    try:
        return with_runner(flow, task_runner, dask_address, workers)
    except ValueError as exc:
        _usage_error(exc)


def _quiet_environment() -> None:
    """Offline defaults for Prefect and GX unless the user set them; progress bars when
    stderr is a terminal."""
    if sys.stderr.isatty():
        os.environ.setdefault("DEEPSSIM_PROGRESS", "1")
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "GX_ANALYTICS_ENABLED": "false",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
                       "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)


def _check_paths(paths: List[Path]) -> None:
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        _fail(f"no such file or folder: {', '.join(missing)}", 2)


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _settings(similar: float, duplicate: float, max_duplicates: int, max_similar_fraction: Optional[float],
              verify: bool, allow_quarantined: bool, k: int, device: str, batch_size: int, wait: float,
              thresholds_source: str = "command line", precision: str = "auto", verify_workers: int = 0) -> dict:
    from deepssim.config import GatePolicy, SearchConfig, Thresholds, VerificationConfig

    default = Thresholds()
    unchanged = (similar, duplicate) == (default.similar, default.duplicate) and thresholds_source == "command line"
    source = default.source if unchanged else thresholds_source
    try:
        parts = dict(thresholds=Thresholds(similar, duplicate, source),
                     policy=GatePolicy(max_duplicates=max_duplicates, max_similar_fraction=max_similar_fraction,
                                       fail_on_quarantined=not allow_quarantined),
                     search=SearchConfig(k=k),
                     verification=VerificationConfig(enabled=verify, workers=verify_workers, device=device))
    except ValueError as exc:
        _usage_error(exc)
    return _valid_settings(**parts, device=device, precision=precision, batch_size=batch_size, store_wait_s=wait)


def _valid_settings(**values) -> dict:
    """AuditSettings(**values) as a plain record; an invalid value is a usage error (exit 2)."""
    from deepssim.config import AuditSettings
    from deepssim.audit import settings_record

    try:
        return settings_record(AuditSettings(**values))
    except ValueError as exc:
        _usage_error(exc)


def _usage_error(exc: Exception | str) -> None:
    typer.secho(f"usage error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _run_flow(fn, **kwargs):
    """Run a flow and return (outcome dict or None, exception or None); a gate that did not
    pass is an outcome, not an error (:func:`flows.audit.audit_outcome`, which passes any
    other flow's result through)."""
    from flows.audit import audit_outcome

    state = fn(**kwargs, return_state=True)
    try:
        return audit_outcome(state), None
    except Exception as exc:  # noqa: BLE001 - reported to the user, exit 4
        return None, exc


# ----------------------------------------------------------------------------- score
@app.command()
def score(a: Optional[Path] = typer.Argument(None, help="first image (PNG/JPEG/TIFF/NPY/DICOM)"),
          b: Optional[Path] = typer.Argument(None, help="second image"),
          pairs: Optional[Path] = typer.Option(None, help="CSV with columns a,b (paths) for batch scoring"),
          out: Optional[Path] = typer.Option(None, help="with --pairs: write the CSV with a score column here"),
          model: Optional[Path] = typer.Option(None, help="checkpoint (default: the shipped model)"),
          device: str = typer.Option("auto", help="auto | cpu | cuda"),
          precision: PrecisionOption = "auto"):
    """Print the DeepSSIM score of two images (≈ their aligned SSIM), or score a CSV of pairs."""
    if pairs is None and (a is None or b is None):
        _usage_error("give two images, or --pairs PAIRS.csv")
    try:
        from deepssim.config import check_precision

        check_precision(precision)
    except ValueError as exc:
        _usage_error(exc)
    try:
        from deepssim.api import DEFAULT_MODEL, load_model

        m = load_model(model or DEFAULT_MODEL, device, precision)
        if pairs is None:
            typer.echo(f"{m.score(a, b):.4f}")
            return
        _score_pairs(m, pairs, out)
    except (ValueError, OSError) as exc:
        _fail(str(exc))


def _score_pairs(model, pairs: Path, out: Optional[Path]) -> None:
    import numpy as np
    import pandas as pd

    table = pd.read_csv(pairs)
    if not {"a", "b"} <= set(table.columns):
        _fail(f"{pairs} needs columns a,b", 2)
    base = pairs.parent
    resolve = lambda p: p if Path(p).is_absolute() else base / p  # noqa: E731 - paths relative to the CSV
    unique = sorted(set(table["a"]) | set(table["b"]))
    emb = dict(zip(unique, model.embed([resolve(p) for p in unique])))
    table["score"] = [round(float(np.dot(emb[x], emb[y])), 6) for x, y in zip(table["a"], table["b"])]
    text = table.to_csv(index=False)
    if out:
        out.write_text(text)
        typer.echo(f"wrote {len(table)} scores to {out}")
    else:
        typer.echo(text, nl=False)


# ----------------------------------------------------------------------------- cohorts
@cohort_app.command("register")
def cohort_register(name: str = typer.Argument(..., metavar="NAME", help="cohort name"),
                    paths: List[Path] = typer.Argument(..., metavar="PATHS", help="files or folders of training images"),
                    db: Optional[Path] = typer.Option(None, help=DB_HELP),
                    model: Optional[Path] = typer.Option(None, help="checkpoint (default: the store's champion)"),
                    device: str = typer.Option("auto"), precision: PrecisionOption = "auto",
                    wait: WaitOption = 60.0, task_runner: TaskRunnerOption = "thread", dask_address: DaskAddressOption = None,
                    dask_workers: DaskWorkersOption = 2, shard_size: ShardSizeOption = 512,
                    as_json: bool = typer.Option(False, "--json", help="print the result as JSON")):
    """Ingest, validate, embed and store a training cohort (incremental: unchanged images are skipped)."""
    _quiet_environment()
    _check_paths(paths)
    settings = _valid_settings(device=device, precision=precision, store_wait_s=wait)
    from flows.register_cohort import register_cohort

    flow = _runner_flow(register_cohort, task_runner, dask_address, dask_workers)
    result, exc = _run_flow(flow, name=name, paths=[str(p) for p in paths],
                            db=str(db) if db else None, model_path=str(model) if model else None,
                            settings=settings, shard_files=shard_size)
    if exc is not None or not isinstance(result, dict):
        _fail(f"registration failed: {exc or result}")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"registered cohort {result['cohort']}: {result['cohort_images']} images "
               f"({result['new_images']} new, {result['new_or_changed'] - result['new_images']} changed, "
               f"{result['unchanged']} unchanged; {result['embedded']} embedded; "
               f"{result['quarantined']} quarantined) with model {result['model_id']}")


@cohort_app.command("list")
def cohort_list(db: Optional[Path] = typer.Option(None, help=DB_HELP)):
    """List registered cohorts."""
    from deepssim.config import default_db_path
    from deepssim.store import Store, StoreError

    try:
        with Store(db or default_db_path(), read_only=True, wait_s=5) as store:
            typer.echo(store.cohorts().to_string(index=False))
    except StoreError as exc:
        _fail(str(exc))


# ----------------------------------------------------------------------------- audit
@app.command()
def audit(paths: List[Path] = typer.Argument(..., metavar="PATHS", help="synthetic images: files or folders"),
          cohort: str = typer.Option(..., help="registered training cohort to compare against"),
          out: Path = typer.Option(Path("deepssim-audit"), help="output folder"),
          db: Optional[Path] = typer.Option(None, help=DB_HELP),
          similar: float = typer.Option(0.60, help="score above which a candidate is similar"),
          duplicate: float = typer.Option(0.85, help="score above which a candidate is a duplicate"),
          max_duplicates: int = typer.Option(0, help="duplicates allowed before the gate fails"),
          max_similar_fraction: Optional[float] = typer.Option(None, help="fail when more than this fraction is similar"),
          allow_quarantined: bool = typer.Option(False, help="do not fail the gate for unreadable candidate files"),
          verify: bool = typer.Option(True, help="verify top matches with aligned SSIM"),
          verify_workers: int = typer.Option(0, help="processes verifying candidates side by side "
                                                     "(0: one per CPU core, at most 8; 1: none)"),
          calibrated: bool = typer.Option(False, help="use the latest thresholds recorded by `deepssim calibrate` "
                                                       "for this cohort (else the latest global ones)"),
          k: int = typer.Option(30, "--k", "-k", help="nearest training images searched per candidate; verification "
                                             "aligns all of them (up to 30) and scores those that align best"),
          model: Optional[Path] = typer.Option(None, help="checkpoint (default: the store's champion)"),
          device: str = typer.Option("auto", help="auto | cpu | cuda"),
          precision: PrecisionOption = "auto",
          batch_size: int = typer.Option(256),
          wait: WaitOption = 60.0, task_runner: TaskRunnerOption = "thread",
          dask_address: DaskAddressOption = None, dask_workers: DaskWorkersOption = 2,
          shard_size: ShardSizeOption = 512):
    """Audit a synthetic dataset against a cohort; writes verdicts.csv, summary.json, report.html."""
    _quiet_environment()
    _check_paths(paths)
    source = "command line"
    if calibrated:
        similar, duplicate, source = _calibrated_thresholds(db, cohort, wait)
    settings = _settings(similar, duplicate, max_duplicates, max_similar_fraction, verify, allow_quarantined,
                         k, device, batch_size, wait, thresholds_source=source, precision=precision,
                         verify_workers=verify_workers)
    _check_audit_target(db, cohort, model)
    from flows.audit import audit as audit_flow

    flow = _runner_flow(audit_flow, task_runner, dask_address, dask_workers)
    outcome, exc = _run_flow(flow, candidates=[str(p) for p in paths], cohort=cohort, out_dir=str(out),
                             db=str(db) if db else None, settings=settings,
                             model_path=str(model) if model else None, shard_files=shard_size)
    if exc is not None or not isinstance(outcome, dict):
        _fail(f"audit error: {exc or outcome} (see {out / 'summary.json'})")
    _print_outcome(outcome)
    raise typer.Exit(outcome["exit_code"])


def _check_audit_target(db: Optional[Path], cohort: str, model: Optional[Path]) -> None:
    """A missing store, an unknown cohort or a missing checkpoint is a usage error (exit 2)
    found before any image is read.  A busy or older store is left to the audit itself."""
    from deepssim.config import default_db_path
    from deepssim.store import Store, StoreBusyError, StoreError

    if model is not None and not model.is_file():
        _usage_error(f"no model checkpoint at {model}")
    path = db or default_db_path()
    if not path.exists():
        _usage_error(f"no store at {path}: register a cohort first (deepssim cohort register NAME PATHS --db {path})")
    try:
        with Store(path, read_only=True, wait_s=1) as store:
            names = sorted(store.cohorts()["name"])
    except StoreBusyError:
        return
    except StoreError as exc:
        if "schema version" in str(exc):
            return
        _usage_error(exc)
    if cohort not in names:
        _usage_error(f"unknown cohort {cohort!r} (registered: {', '.join(names) or 'none'})")


def _print_outcome(outcome: dict) -> None:
    colour = {"pass": typer.colors.GREEN, "fail": typer.colors.RED}.get(outcome["verdict"], typer.colors.YELLOW)
    typer.secho(f"gate {outcome['verdict'].upper()}: {outcome['reason']}", fg=colour, bold=True)
    typer.echo("counts: " + ", ".join(f"{k} {v}" for k, v in outcome["counts"].items()))
    typer.echo(f"report: {outcome['report']}")


# ----------------------------------------------------------------------------- audits
audits_app = typer.Typer(no_args_is_help=True, help="The audit trail: every audit's verdict and files, from the store.")
app.add_typer(audits_app, name="audits")


def _open_store(db: Optional[Path]):
    from deepssim.config import default_db_path
    from deepssim.store import Store, StoreError

    try:
        return Store(db or default_db_path(), read_only=True, wait_s=5)
    except StoreError as exc:
        _fail(str(exc), 2)


@audits_app.command("list")
def audits_list(db: Optional[Path] = typer.Option(None, help=DB_HELP),
                limit: int = typer.Option(50, help="newest audits shown")):
    """Audits newest first: id, finish time (UTC), cohort, candidates, verdict, counts."""
    from deepssim.audit import audit_table

    with _open_store(db) as store:
        table = audit_table(store.audits(limit))
    typer.echo(table.to_string(index=False) if len(table) else "no audits recorded")


@audits_app.command("export")
def audits_export(audit_id: str = typer.Argument(..., metavar="AUDIT_ID", help="audit id (deepssim audits list)"),
                  out: Path = typer.Option(..., help="folder to write the audit's files into"),
                  db: Optional[Path] = typer.Option(None, help=DB_HELP)):
    """Re-write an audit's summary.json, verdicts.csv, report.html (...) exactly as first written."""
    from deepssim.store import StoreError

    with _open_store(db) as store:
        try:
            files = store.audit_files(audit_id)
        except StoreError as exc:
            _fail(str(exc), 2)
    if not files:
        _fail(f"audit {audit_id} was recorded before audits kept their files (only its rows are in the store)")
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out / name).write_bytes(content)
    typer.echo(f"wrote {', '.join(sorted(files))} of audit {audit_id} to {out}")


# ----------------------------------------------------------------------------- demo
@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="output folder (holds the demo store too)")):
    """Register the bundled real sample cohort and audit the bundled candidates (some are planted copies)."""
    _quiet_environment()
    from flows.demo import run_demo

    say = lambda message: typer.secho(message, err=True, dim=True)  # noqa: E731 - progress on stderr
    try:
        outcome = run_demo(out, say=say)
    except Exception as exc:  # noqa: BLE001
        _fail(f"demo failed: {type(exc).__name__}: {exc}")
    _print_outcome(outcome)
    found, planted = outcome["demo"]["planted_found"], outcome["demo"]["planted"]
    typer.echo(f"planted copies flagged as duplicates: {found}/{planted}")
    typer.echo(f"open the report: {outcome['report']}")
    raise typer.Exit(0 if found == planted and outcome["verdict"] == "fail" else 1)


# ----------------------------------------------------------------------------- case study
@app.command()
def casestudy(out: Path = typer.Option(Path("casestudy-out"), help="output folder (holds the case study's own store)"),
              generator: Optional[Path] = typer.Option(None, help="generator weights (.pt beside its .json; "
                                                       "default: the shipped casestudy-ddpm32-seed1)"),
              data: Optional[Path] = typer.Option(None, help="root of the generator's training images "
                                                  "(default: ../shared/data beside the repository)"),
              n: int = typer.Option(200, "--n", help="samples to draw"),
              seed: int = typer.Option(0, help="sampling seed (the samples are the same for a seed)"),
              sample_steps: Optional[int] = typer.Option(None, help="DDIM steps (default: the generator's)"),
              as_json: bool = typer.Option(False, "--json", help="print the case-study summary as JSON")):
    """The paper's case study: sample a diffusion model that memorized, label the samples through its grid,
    audit them with the gate (plus a non-member control) and report how the two agree."""
    _quiet_environment()
    from flows.casestudy import DEFAULT_DATA, DEFAULT_GENERATOR, casestudy as casestudy_flow, check_inputs

    generator, data = generator or DEFAULT_GENERATOR, data or DEFAULT_DATA
    if n < 1:
        _usage_error("--n must be at least 1")
    try:
        check_inputs(generator, data)
    except ValueError as exc:
        _usage_error(exc)
    say = lambda message: typer.secho(message, err=True, dim=True)  # noqa: E731 - progress on stderr
    say(f"case study: {n} samples of {generator.name}, gate audit, report (a few minutes on a CPU) ...")
    try:
        result = casestudy_flow(out_dir=str(out), generator=str(generator), data=str(data), n_samples=n, seed=seed,
                                sample_steps=sample_steps)
    except Exception as exc:  # noqa: BLE001
        _fail(f"case study failed: {type(exc).__name__}: {exc}")
    summary = result["summary"]
    if as_json:
        typer.echo(json.dumps(summary, indent=1, default=str))
    else:
        typer.echo(summary["headline"])
        typer.echo(f"report: {result['report']}")


# ----------------------------------------------------------------------------- models
model_app = typer.Typer(no_args_is_help=True, help="The model registry: list, show and promote DeepSSIM models.")
app.add_typer(model_app, name="model")


@app.command()
def train(cohort: str = typer.Option(..., help="registered cohort to retrain on"),
          db: Optional[Path] = typer.Option(None, help=DB_HELP),
          steps: int = typer.Option(600, help="maximum training steps"),
          time_budget: Optional[float] = typer.Option(300.0, help="seconds of training (the schedule fits into it)"),
          init: str = typer.Option("champion", help="champion | scratch | path of a checkpoint to fine-tune"),
          batch_size: int = typer.Option(32), device: str = typer.Option("auto", help="auto | cpu | cuda"),
          benchmark: int = typer.Option(12, help="benchmark candidates per kind (0: no benchmark)"),
          promote: bool = typer.Option(True, help="promote the challenger when it beats the champion")):
    """Retrain DeepSSIM on a cohort; promote the challenger only if it beats the champion."""
    _quiet_environment()
    from flows.retrain import retrain

    settings = {"steps": steps, "time_budget_s": time_budget, "init": init, "batch_size": batch_size,
                "device": device, "benchmark_per_kind": benchmark}
    result, exc = _run_flow(retrain, cohort=cohort, db=str(db) if db else None, settings=settings, promote=promote)
    if exc is not None or not isinstance(result, dict):
        _fail(f"retraining failed: {exc or result}")
    typer.echo(json.dumps(result, indent=2, default=str))


@model_app.command("list")
def model_list(db: Optional[Path] = typer.Option(None, help=DB_HELP)):
    """List registered models, newest first (status champion: the one audits use)."""
    from deepssim.config import default_db_path
    from deepssim.store import registry_table
    from deepssim.store import Store, StoreError

    try:
        with Store(db or default_db_path(), read_only=True, wait_s=5) as store:
            rows = registry_table(store)
    except StoreError as exc:
        _fail(str(exc))
    import pandas as pd

    typer.echo(pd.DataFrame(rows).drop(columns=["reason"], errors="ignore").to_string(index=False)
               if rows else "no models registered")


@model_app.command("show")
def model_show(model_id: str = typer.Argument(..., help="model id (deepssim-...)"),
               db: Optional[Path] = typer.Option(None, help=DB_HELP)):
    """Everything the registry knows about one model (JSON)."""
    from deepssim.config import default_db_path
    from deepssim.store import cohorts_missing, get_model
    from deepssim.store import Store, StoreError

    try:
        with Store(db or default_db_path(), read_only=True, wait_s=5) as store:
            row = get_model(store, model_id)
            row["cohorts_not_embedded"] = cohorts_missing(store, model_id)
    except StoreError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(row, indent=2, default=str))


@model_app.command("promote")
def model_promote(model_id: str = typer.Argument(..., help="model id to make the champion"),
                  reason: str = typer.Option(..., help="why (recorded in the registry)"),
                  db: Optional[Path] = typer.Option(None, help=DB_HELP),
                  reembed: bool = typer.Option(True, help="embed every cohort under the model first"),
                  device: str = typer.Option("auto")):
    """Make a model the champion.  Cohorts are re-embedded under it first; without
    --reembed the promotion is refused while any cohort lacks its embeddings."""
    from deepssim.config import default_db_path
    from deepssim.store import get_model, promote, reembed_cohorts
    from deepssim.store import Store, StoreError

    try:
        with Store(db or default_db_path(), wait_s=60) as store:
            row = get_model(store, model_id)
            if reembed and row["path"] and Path(row["path"]).is_file():
                from deepssim.metric import load_checkpoint
                from deepssim.metric import Embedder

                model, _ = load_checkpoint(row["path"])
                done = reembed_cohorts(store, model_id, Embedder(model, device=device).embed)
                typer.echo(f"re-embedded {sum(done.values())} image(s) in {len(done)} cohort(s)")
            result = promote(store, model_id, reason)
    except StoreError as exc:
        _fail(str(exc))
    typer.echo(f"champion: {result['model_id']} (was {result['previous']})")


# ----------------------------------------------------------------------------- calibration, benchmarks
def _calibrated_thresholds(db: Optional[Path], cohort: str, wait: float) -> tuple[float, float, str]:
    """(similar, duplicate, source) of the latest calibration for ``cohort`` (else global);
    none recorded is a usage error (exit 2)."""
    from deepssim.evaluation import latest_thresholds
    from deepssim.config import default_db_path
    from deepssim.store import Store, StoreError

    try:
        with Store(db or default_db_path(), read_only=True, wait_s=wait) as store:
            found = latest_thresholds(store, cohort)
    except StoreError as exc:
        _fail(str(exc))
    if found is None:
        _fail(f"--calibrated: no calibration recorded for cohort {cohort!r} nor a global one "
              "(run `deepssim calibrate` first)", 2)
    thresholds, _ = found
    return thresholds.similar, thresholds.duplicate, thresholds.source


@app.command()
def calibrate(benchmark: Optional[Path] = typer.Option(None, help="built benchmark folder (deepssim benchmark build)"),
              cohort: Optional[str] = typer.Option(None, help="registered cohort: calibrate on its held-out subjects "
                                                   "(with --benchmark: record the benchmark's thresholds for it)"),
              db: Optional[Path] = typer.Option(None, help=DB_HELP),
              min_duplicate_recall: float = typer.Option(0.98, help="duplicate-recall floor (--benchmark)"),
              model: Optional[Path] = typer.Option(None, help="checkpoint for --benchmark (default: the shipped model)")):
    """Choose similar/duplicate thresholds from a labelled benchmark or a cohort; record them in the store."""
    if benchmark is None and cohort is None:
        typer.secho("usage error: give --benchmark BENCH or --cohort NAME", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if benchmark is not None and not (benchmark / "truth.csv").is_file():
        _fail(f"{benchmark} is not a built benchmark (no truth.csv)", 2)
    from deepssim.evaluation import calibrate_benchmark_dir, calibrate_store_cohort
    from deepssim.config import default_db_path
    from deepssim.store import Store, StoreError

    try:
        with Store(db or default_db_path(), wait_s=60) as store:
            if benchmark is not None:
                thresholds, details = calibrate_benchmark_dir(benchmark, checkpoint=model,
                                                              min_duplicate_recall=min_duplicate_recall)
                model_id = None
            else:
                from deepssim.store import champion

                found = champion(store)  # the model audits use
                if found is None:
                    _fail("no champion model in the store", 2)
                model_id = found["model_id"]
                thresholds, details = calibrate_store_cohort(store, cohort, model_id)
            cid = store.record_calibration(thresholds, cohort, model_id, details)
    except (StoreError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"calibration_id": cid, "cohort": cohort, "similar": round(thresholds.similar, 4),
                           "duplicate": round(thresholds.duplicate, 4), "source": thresholds.source}, indent=2))


benchmark_app = typer.Typer(no_args_is_help=True, help="Build and run memorization benchmarks.")
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("build")
def benchmark_build(src: Path = typer.Argument(..., help="folder of <subject>/ folders of PNG/NPY"),
                    out: Path = typer.Argument(..., help="benchmark folder to write"),
                    seed: int = typer.Option(0, help="everything random is drawn from it"),
                    n: int = typer.Option(30, help="candidates per kind (duplicate, similar, different)"),
                    max_per_subject: int = typer.Option(12, help="images kept per subject"),
                    neighbours: int = typer.Option(
                        0, min=0, help="left-out slices of member subjects next to registered ones (an "
                        "interpolating generator's near-copies), labelled by aligned SSIM; 10-40 is "
                        "typical, 0 leaves them out")):
    """Build a subject-disjoint benchmark (members, planted duplicates/similar, non-members,
    optionally neighbouring slices of members)."""
    if not src.is_dir():
        _fail(f"no such folder: {src}", 2)
    from deepssim.evaluation import build_benchmark

    try:
        summary = build_benchmark(src, out, seed=seed, n_duplicates=n, n_similar=n, n_different=n,
                                  max_per_subject=max_per_subject, n_neighbours=neighbours)
    except ValueError as exc:
        _fail(str(exc), 2)
    typer.echo(json.dumps(summary, indent=2))


@benchmark_app.command("run")
def benchmark_run(bench: Path = typer.Argument(..., help="built benchmark folder"),
                  out: Optional[Path] = typer.Option(None, help="write results.json/md/png here (default: BENCH/results)"),
                  model: Optional[Path] = typer.Option(None, help="checkpoint (default: the shipped model)")):
    """Score a benchmark with DeepSSIM, DeepSSIM + verification and baselines; print the table."""
    if not (bench / "truth.csv").is_file():
        _fail(f"{bench} is not a built benchmark (no truth.csv)", 2)
    from deepssim.evaluation import markdown_table, run_benchmark

    results = run_benchmark(bench, checkpoint=model, out_dir=out or bench / "results")
    typer.echo(markdown_table(results), nl=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
