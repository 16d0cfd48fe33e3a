"""Self-contained HTML audit report.

:func:`render_report` turns the audit context (see ``docs/ARCHITECTURE.md``, section
Report) into one HTML file: inline CSS, no script, no external URL, every image a
``data:`` URI.  Everything that comes from file names or metadata goes through jinja2's
autoescaping (``autoescape=True`` is forced: ``select_autoescape`` would not match the
``.j2`` suffix); the template never uses ``|safe``.  A Content-Security-Policy meta tag
forbids scripts and remote loads as a second line of defence.

The Python side builds a plain "view" dict (:func:`build_view`) with every key the
template needs, so missing optional context keys render as "not available" sections and
the template runs under ``StrictUndefined``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2
from markupsafe import Markup, escape

from .images import data_uri
from .plots import score_histogram_png

__all__ = ["render_report", "render_html", "build_view", "MAX_TABLE_ROWS", "MAX_EVIDENCE"]

LABELS = ("duplicate", "similar", "different")
_SEVERITY = {"duplicate": 0, "similar": 1, "different": 2}
VERDICTS = ("pass", "fail", "error")
MAX_TABLE_ROWS = 200
MAX_EVIDENCE = 24
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


# ---------------------------------------------------------------- small value helpers
def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_score(value: Any, digits: int = 3) -> str:
    f = _float(value)
    return "—" if f is None else f"{f:.{digits}f}"


def fmt_bool(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        return value
    return "yes" if bool(value) else "no"


def fmt_value(value: Any) -> str:
    """A scalar or small structure as text (lists/dicts as compact JSON)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def fmt_path(value: Any) -> Markup:
    """A path with a line-break opportunity after each ``/``.

    Every segment is HTML-escaped *before* the ``<wbr>`` tags are joined in, so the
    result is safe markup whatever the file name contains.
    """
    return Markup("/<wbr>").join(escape(part) for part in fmt_value(value).split("/"))


def label_class(label: Any) -> str:
    """CSS class suffix for a label: a known label, otherwise ``other`` (never raw data)."""
    return label if label in LABELS else "other"


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _rows(value: Any) -> list[Mapping]:
    if value is None:
        return []
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        value = value.to_dict("records")
    return [r for r in value if isinstance(r, Mapping)]


def flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as ``(dotted.key, text)`` rows, in the dict's own order."""
    if not isinstance(data, Mapping):
        return [(prefix or "value", fmt_value(data))] if data is not None else []
    rows: list[tuple[str, str]] = []
    for key in data:
        name = f"{prefix}.{key}" if prefix else str(key)
        value = data[key]
        if isinstance(value, Mapping) and value:
            rows.extend(flatten(value, name))
        else:
            rows.append((name, fmt_value(value)))
    return rows


# ---------------------------------------------------------------- view sections
def _verdict(summary: Mapping) -> dict:
    raw = str(summary.get("verdict", "error")).lower()
    verdict = raw if raw in VERDICTS else "error"
    reason = summary.get("reason") or ("no verdict recorded" if "verdict" not in summary else "")
    return {"key": verdict, "text": verdict.upper(), "reason": str(reason),
            "complete": summary.get("complete", True) is not False}


def _counts(counts: Mapping, verdicts: list[Mapping]) -> list[dict]:
    if not counts and verdicts:
        counts = {label: sum(1 for r in verdicts if r.get("label") == label) for label in LABELS}
    keys = [k for k in LABELS if k in counts] + sorted((k for k in counts if k not in LABELS), key=str)
    total = sum(int(counts[k]) for k in keys if k in LABELS and _float(counts[k]) is not None)
    out = []
    for key in keys:
        n = counts[key]
        share = (100.0 * float(n) / total) if key in LABELS and total and _float(n) is not None else None
        out.append({"name": str(key), "count": fmt_value(n), "share": share, "cls": label_class(key)})
    return out


def _desc(value: Any) -> float:
    """Sort key putting the highest score first and missing scores last."""
    f = _float(value)
    return -f if f is not None else math.inf


def _capped(rows: list, cap: int = MAX_TABLE_ROWS) -> dict:
    return {"rows": rows[:cap], "total": len(rows), "truncated": len(rows) > cap}


def _worst(verdicts: list[Mapping]) -> dict:
    return _capped(sorted(verdicts, key=lambda r: _desc(r.get("score"))))


def _volumes(volumes: list[Mapping]) -> dict:
    return _capped(sorted(volumes, key=lambda r: (_SEVERITY.get(r.get("worst_label"), 3),
                                                  _desc(r.get("best_score")))))


def _evidence(evidence: list[Mapping]) -> dict:
    ranked = sorted(evidence, key=lambda r: _desc(r.get("score")))
    view = _capped(ranked, MAX_EVIDENCE)
    view["rows"] = [dict(e, candidate_uri=data_uri(e.get("candidate_png")),
                         nearest_uri=data_uri(e.get("nearest_png")), aligned_uri=data_uri(e.get("aligned_png")),
                         difference_uri=data_uri(e.get("difference_png"))) for e in view["rows"]]
    return view


def _validation(validation: Mapping) -> dict | None:
    if not validation:
        return None
    expectations = _rows(validation.get("expectations"))
    extra = {k: v for k, v in validation.items() if k not in ("success", "expectations")}
    return {"success": validation.get("success"), "expectations": expectations, "extra": flatten(extra)}


def _thresholds(summary: Mapping) -> dict:
    t = _mapping(summary.get("thresholds"))
    return {"similar": _float(t.get("similar")), "duplicate": _float(t.get("duplicate")),
            "source": t.get("source"), "rows": flatten(t)}


def _first(data: Mapping, keys: Iterable[str]) -> dict:
    """``data`` with ``keys`` (those present) moved to the front."""
    head = {k: data[k] for k in keys if k in data}
    return {**head, **{k: v for k, v in data.items() if k not in head}}


_BYTE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def _human(key: str, text: str) -> str:
    """Byte counts and pixel limits in units a reader can take in."""
    try:
        number = int(text)
    except ValueError:
        return text
    if key.endswith("bytes"):
        size, unit = float(number), 0
        while size >= 1024 and unit < len(_BYTE_UNITS) - 1:
            size, unit = size / 1024, unit + 1
        return f"{size:.0f} {_BYTE_UNITS[unit]}" if unit else f"{number} bytes"
    return f"{number:,} pixels" if key.endswith("pixels") else text


def _provenance(summary: Mapping) -> list[dict]:
    run = _mapping(summary.get("run"))
    # thresholds and policy have their own sections: not repeated under settings
    settings = {k: v for k, v in _mapping(summary.get("settings")).items() if k not in ("thresholds", "policy")}
    sections = [
        ("Run", run if run else None),
        ("Model", _first(_mapping(summary.get("model")), ("model_id", "sha256"))),
        ("Training cohort", summary.get("cohort")),
        ("Thresholds", summary.get("thresholds")),
        ("Gate policy", summary.get("policy")),
        ("Package versions", summary.get("versions")),
        ("Settings", settings or None),
    ]
    return [{"title": title, "rows": [(k, _human(k, v)) for k, v in flatten(data)]} for title, data in sections]


def _headline(summary: Mapping) -> list[tuple[str, str]]:
    run, model, cohort = (_mapping(summary.get(k)) for k in ("run", "model", "cohort"))
    cohort_text = cohort.get("name") if cohort else summary.get("cohort")
    return [("Audit id", fmt_value(run.get("audit_id"))),
            ("Candidate root", fmt_value(summary.get("candidate_root"))),
            ("Training cohort", fmt_value(cohort_text)),
            ("Model", fmt_value(model.get("model_id"))),
            ("Started", fmt_value(run.get("started_at"))),
            ("Finished", fmt_value(run.get("finished_at")))]


def build_view(context: Mapping) -> dict:
    """Everything the template reads, with every optional part normalised."""
    context = _mapping(context)
    summary = _mapping(context.get("summary"))
    verdicts = _rows(context.get("verdicts"))
    thresholds = _thresholds(summary)
    best = context.get("best_scores")
    if best is None:
        best = [r.get("score") for r in verdicts]
    hist = score_histogram_png(best, thresholds["similar"], thresholds["duplicate"])
    return {
        "verdict": _verdict(summary),
        "headline": _headline(summary),
        "counts": _counts(_mapping(summary.get("counts")), verdicts),
        "volume_counts": _counts(_mapping(summary.get("volume_counts")), []),
        "histogram_uri": data_uri(hist),
        "n_scores": sum(1 for s in best if _float(s) is not None),
        "thresholds": thresholds,
        "evidence": _evidence(_rows(context.get("evidence"))),
        "worst": _worst(verdicts),
        "volumes": _volumes(_rows(context.get("volumes"))),
        "quarantine": _capped(_rows(context.get("quarantine"))),
        "validation": _validation(_mapping(context.get("validation")) or _mapping(summary.get("validation"))),
        "provenance": _provenance(summary),
    }


# ---------------------------------------------------------------- rendering
def _ref(image_id) -> str:
    """The opaque ref artifacts and run states use for an image (see deepssim.audit.outputs.image_ref)."""
    from deepssim.audit import image_ref

    return image_ref(str(image_id)) if image_id else ""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(path=fmt_path, score=fmt_score, yesno=fmt_bool, value=fmt_value,
                       label_class=label_class, ref=_ref)
    return env


def render_html(context: Mapping) -> str:
    """The report as an HTML string."""
    return _environment().get_template("report.html.j2").render(**build_view(context))


def render_report(context: dict, out_path: Path) -> Path:
    """Render the audit report to ``out_path`` (written atomically) and return the path."""
    return write_atomically(render_html(context), Path(out_path))


def write_atomically(html: str, out_path: Path) -> Path:
    """Write ``html`` to ``out_path`` so that a reader never sees half a page."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target then renamed, so a reader never sees half a report; a
    # plain open() keeps the usual umask-derived permissions (mkstemp would give 0600).
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
