"""Data validation of an ingestion manifest with Great Expectations (GX 1.x, in code).

GX runs fully offline: analytics off (``GX_ANALYTICS_ENABLED=false``), an ephemeral context,
a pandas data source over the manifest DataFrame, one expectation suite run through a
``ValidationDefinition``.  GX is imported inside :func:`validate_manifest` (it takes ~2 s).
Its Data Docs are not used (they load CSS from CDNs); the caller gets a plain dict.

Checks (ok rows unless stated): ``status`` in {ok, quarantined} (all rows), ``image_id``
unique, ``nan_fraction <= max_nan_fraction``, smaller side >= ``min_side``, finite
intensity range, ``sha256`` present and 64 lower-case hex digits, ``foreground_fraction >=
foreground_threshold``.  Ok rows that fail a check are turned into quarantined rows whose
reason names the check, so later stages only see images that passed.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from deepssim.config import IngestConfig
from deepssim.io.manifest import QUARANTINE_COLUMNS, quarantine_rows, write_quarantine_csv

__all__ = ["ValidationConfig", "validate_manifest", "write_quarantine_csv", "quarantine_rows",
           "QUARANTINE_COLUMNS"]

MAX_LISTED_IDS = 20
_ROW = "_row"


@dataclass(frozen=True)
class ValidationConfig:
    """Limits of the manifest checks."""

    max_nan_fraction: float = 0.5
    min_side: int = 16
    foreground_threshold: float = 0.10

    @classmethod
    def from_ingest(cls, ingest: IngestConfig, max_nan_fraction: float = 0.5) -> "ValidationConfig":
        # volume slices under foreground_threshold were skipped at ingestion; 2D files only
        # need the lower 2D bar
        return cls(max_nan_fraction, ingest.min_side, min(ingest.foreground_threshold, ingest.min_foreground_2d))


def _min_side(orig_shape: Any) -> float:
    """Smaller of the first two sides of an ``"HxW[xC]"`` shape string; NaN when unknown."""
    try:
        h, w = (int(v) for v in str(orig_shape).split("x")[:2])
    except ValueError:
        return float("nan")
    return float(min(h, w))


def _prepared(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest plus derived columns the expectations test (plain dtypes for GX)."""
    df = manifest.reset_index(drop=True).copy()
    df[_ROW] = np.arange(len(df))
    df["_min_side"] = [_min_side(s) for s in df["orig_shape"]]
    lo = pd.to_numeric(df["intensity_min"], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(df["intensity_max"], errors="coerce").to_numpy(dtype=float)
    df["_intensity_finite"] = np.isfinite(lo) & np.isfinite(hi) & (hi >= lo)
    for col in ("image_id", "status", "sha256"):
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df


def _expectations(cfg: ValidationConfig) -> list[tuple[str, str, Any]]:
    """(name, quarantine reason, expectation) triples."""
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    ok = Column("status") == "ok"
    E = gx.expectations
    return [
        ("status_is_known", "status not in {ok, quarantined}",
         E.ExpectColumnValuesToBeInSet(column="status", value_set=["ok", "quarantined"])),
        ("image_id_unique", "duplicate image_id",
         E.ExpectColumnValuesToBeUnique(column="image_id", row_condition=ok)),
        ("nan_fraction_at_most_limit", f"NaN fraction above {cfg.max_nan_fraction:g}",
         E.ExpectColumnValuesToBeBetween(column="nan_fraction", min_value=0.0,
                                         max_value=cfg.max_nan_fraction, row_condition=ok)),
        ("min_side_at_least_limit", f"image smaller than {cfg.min_side}×{cfg.min_side}",
         E.ExpectColumnValuesToBeBetween(column="_min_side", min_value=cfg.min_side, row_condition=ok)),
        ("intensity_range_finite", "non-finite intensity range",
         E.ExpectColumnValuesToBeInSet(column="_intensity_finite", value_set=[True], row_condition=ok)),
        ("sha256_present", "missing sha256",
         E.ExpectColumnValuesToNotBeNull(column="sha256", row_condition=ok)),
        ("sha256_is_64_hex", "sha256 is not 64 hex digits",
         E.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$", row_condition=ok)),
        ("foreground_at_least_threshold", f"foreground fraction below {cfg.foreground_threshold:g}",
         E.ExpectColumnValuesToBeBetween(column="foreground_fraction",
                                         min_value=cfg.foreground_threshold, row_condition=ok)),
    ]


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX logs a temp-dir line at INFO for every ephemeral context: noise in CLI output
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, context


def _unexpected_rows(result: dict) -> list[int]:
    rows = []
    for item in result.get("unexpected_index_list") or []:
        rows.append(int(item[_ROW]) if isinstance(item, dict) else int(item))
    return sorted(set(rows))


def _run_suite(df: pd.DataFrame, cfg: ValidationConfig):
    gx, context = _context()
    batch = (context.data_sources.add_pandas("manifest")
             .add_dataframe_asset(name="manifest")
             .add_batch_definition_whole_dataframe("whole manifest"))
    checks = _expectations(cfg)
    suite = context.suites.add(gx.ExpectationSuite(name="deepssim_manifest"))
    for name, _, expectation in checks:
        expectation.meta = {"check": name}
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="deepssim_manifest", data=batch, suite=suite))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = definition.run(batch_parameters={"dataframe": df}, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": [_ROW]})
    return gx.__version__, checks, result


def validate_manifest(manifest: pd.DataFrame, config: ValidationConfig | None = None
                      ) -> tuple[dict, pd.DataFrame]:
    """Run the suite over ``manifest``.

    Returns ``(summary, manifest)``: ``summary`` = ``{"success": bool, "expectations":
    [{"name", "success", "unexpected_count", "unexpected_ids" (<= 20)}], "gx_version"}``
    (plain JSON types); ``manifest`` = a copy where ok rows that failed a check are
    quarantined (``row`` -1) with the check's reason.  ``success`` is True when every
    expectation passed on the input.
    """
    cfg = config or ValidationConfig()
    df = _prepared(manifest)
    version, checks, result = _run_suite(df, cfg)
    out = manifest.reset_index(drop=True).copy()
    if not (pd.api.types.is_string_dtype(out["reason"]) or out["reason"].dtype == object):
        out["reason"] = out["reason"].astype(object)  # an all-NaN float column cannot take text
    entries = []
    by_name = {res.expectation_config.meta["check"]: res for res in result.results}
    for name, reason, _ in checks:
        res = by_name[name]
        rows = _unexpected_rows(res.result)
        ids = list(dict.fromkeys(str(df.at[r, "image_id"]) for r in rows))
        entries.append({"name": name, "success": bool(res.success),
                        "unexpected_count": int(res.result.get("unexpected_count") or len(rows)),
                        "unexpected_ids": ids[:MAX_LISTED_IDS]})
        flag = [r for r in rows if out.at[r, "status"] == "ok"]
        out.loc[flag, "reason"] = f"failed validation: {reason}"
        out.loc[flag, "status"] = "quarantined"
        out.loc[flag, "row"] = -1
    summary = {"success": bool(result.success), "expectations": entries, "gx_version": str(version)}
    return summary, out
