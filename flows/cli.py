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
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="DeepSSIM memorization gate: find synthetic images that copy training scans.")
cohort_app = typer.Typer(no_args_is_help=True, help="Register and list training cohorts.")
app.add_typer(cohort_app, name="cohort")

EXIT_ERROR = 4
DB_HELP = "DuckDB store (default: $DEEPSSIM_HOME/deepssim.duckdb, DEEPSSIM_HOME defaults to ~/.deepssim)"


def _quiet_environment() -> None:
    """Offline defaults for Prefect and GX unless the user set them."""
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "GX_ANALYTICS_ENABLED": "false",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
                       "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)
    import logging

    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _settings(similar: float, duplicate: float, max_duplicates: int, max_similar_fraction: Optional[float],
              verify: bool, allow_quarantined: bool, k: int, device: str, batch_size: int, wait: float,
              thresholds_source: str = "command line") -> dict:
    from deepssim.config import AuditSettings, GatePolicy, SearchConfig, Thresholds, VerificationConfig
    from deepssim.pipeline import settings_record

    default = Thresholds()
    source = default.source if (similar, duplicate) == (default.similar, default.duplicate) else thresholds_source
    try:
        settings = AuditSettings(
            thresholds=Thresholds(similar, duplicate, source),
            policy=GatePolicy(max_duplicates=max_duplicates, max_similar_fraction=max_similar_fraction,
                              fail_on_quarantined=not allow_quarantined),
            search=SearchConfig(k=k), verification=VerificationConfig(enabled=verify),
            device=device, batch_size=batch_size, store_wait_s=wait)
    except ValueError as exc:
        typer.secho(f"usage error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return settings_record(settings)


def _run_flow(fn, **kwargs):
    """Run a flow and return (outcome dict or None, exception or None)."""
    state = fn(**kwargs, return_state=True)
    try:
        return state.result(raise_on_failure=False), None
    except Exception as exc:  # noqa: BLE001 - reported to the user, exit 4
        return None, exc


# ----------------------------------------------------------------------------- score
@app.command()
def score(a: Optional[Path] = typer.Argument(None, help="first image (PNG/JPEG/TIFF/NPY/DICOM)"),
          b: Optional[Path] = typer.Argument(None, help="second image"),
          pairs: Optional[Path] = typer.Option(None, help="CSV with columns a,b (paths) for batch scoring"),
          out: Optional[Path] = typer.Option(None, help="with --pairs: write the CSV with a score column here"),
          model: Optional[Path] = typer.Option(None, help="checkpoint (default: the shipped model)"),
          device: str = typer.Option("auto", help="auto | cpu | cuda")):
    """Print the DeepSSIM score of two images (≈ their aligned SSIM), or score a CSV of pairs."""
    if pairs is None and (a is None or b is None):
        typer.secho("usage error: give two images, or --pairs PAIRS.csv", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        from deepssim.api import load_default_model, load_model

        m = load_model(model, device) if model else load_default_model(device)
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
def cohort_register(name: str = typer.Argument(..., help="cohort name"),
                    paths: List[Path] = typer.Argument(..., help="files or folders of training images"),
                    db: Optional[Path] = typer.Option(None, help=DB_HELP),
                    model: Optional[Path] = typer.Option(None, help="checkpoint (default: the store's champion)"),
                    device: str = typer.Option("auto"), wait: float = typer.Option(60.0, help="seconds to wait for a busy store")):
    """Ingest, validate, embed and store a training cohort (incremental: unchanged images are skipped)."""
    _quiet_environment()
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        _fail(f"no such file or folder: {', '.join(missing)}", 2)
    from flows.register_cohort import register_cohort

    result, exc = _run_flow(register_cohort, name=name, paths=[str(p) for p in paths],
                            db=str(db) if db else None, model_path=str(model) if model else None,
                            settings={"device": device, "store_wait_s": wait})
    if exc is not None or not isinstance(result, dict):
        _fail(f"registration failed: {exc or result}")
    typer.echo(json.dumps(result, indent=2))


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
def audit(paths: List[Path] = typer.Argument(..., help="synthetic images: files or folders"),
          cohort: str = typer.Option(..., help="registered training cohort to compare against"),
          out: Path = typer.Option(Path("deepssim-audit"), help="output folder"),
          db: Optional[Path] = typer.Option(None, help=DB_HELP),
          similar: float = typer.Option(0.60, help="score above which a candidate is similar"),
          duplicate: float = typer.Option(0.85, help="score above which a candidate is a duplicate"),
          max_duplicates: int = typer.Option(0, help="duplicates allowed before the gate fails"),
          max_similar_fraction: Optional[float] = typer.Option(None, help="fail when more than this fraction is similar"),
          allow_quarantined: bool = typer.Option(False, help="do not fail the gate for unreadable candidate files"),
          verify: bool = typer.Option(True, help="verify top matches with aligned SSIM"),
          k: int = typer.Option(5, help="nearest training images kept per candidate"),
          model: Optional[Path] = typer.Option(None, help="checkpoint (default: the store's champion)"),
          device: str = typer.Option("auto", help="auto | cpu | cuda"),
          batch_size: int = typer.Option(256),
          wait: float = typer.Option(60.0, help="seconds to wait for a busy store")):
    """Audit a synthetic dataset against a cohort; writes verdicts.csv, summary.json, report.html."""
    _quiet_environment()
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        _fail(f"no such file or folder: {', '.join(missing)}", 2)
    settings = _settings(similar, duplicate, max_duplicates, max_similar_fraction, verify, allow_quarantined,
                         k, device, batch_size, wait)
    from flows.audit import audit as audit_flow

    outcome, exc = _run_flow(audit_flow, candidates=[str(p) for p in paths], cohort=cohort, out_dir=str(out),
                             db=str(db) if db else None, settings=settings,
                             model_path=str(model) if model else None)
    if exc is not None or not isinstance(outcome, dict):
        _fail(f"audit error: {exc or outcome} (see {out / 'summary.json'})")
    _print_outcome(outcome)
    raise typer.Exit(outcome["exit_code"])


def _print_outcome(outcome: dict) -> None:
    colour = {"pass": typer.colors.GREEN, "fail": typer.colors.RED}.get(outcome["verdict"], typer.colors.YELLOW)
    typer.secho(f"gate {outcome['verdict'].upper()}: {outcome['reason']}", fg=colour, bold=True)
    typer.echo("counts: " + ", ".join(f"{k} {v}" for k, v in outcome["counts"].items()))
    typer.echo(f"report: {outcome['report']}")


# ----------------------------------------------------------------------------- demo
@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="output folder (holds the demo store too)")):
    """Register the bundled real sample cohort and audit the bundled candidates (some are planted copies)."""
    _quiet_environment()
    from flows.demo import run_demo

    try:
        outcome = run_demo(out)
    except Exception as exc:  # noqa: BLE001
        _fail(f"demo failed: {type(exc).__name__}: {exc}")
    _print_outcome(outcome)
    found, planted = outcome["demo"]["planted_found"], outcome["demo"]["planted"]
    typer.echo(f"planted copies flagged as duplicates: {found}/{planted}")
    typer.echo(f"open the report: {outcome['report']}")
    raise typer.Exit(0 if found == planted and outcome["verdict"] == "fail" else 1)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
