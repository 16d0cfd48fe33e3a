"""Plots for the report, drawn with matplotlib's Agg backend and returned as PNG bytes."""
from __future__ import annotations

import io
import math
from typing import Iterable

import numpy as np

__all__ = ["score_histogram_png", "memorization_png", "score_agreement_png"]

_GREY, _AMBER, _RED = "#9aa5b1", "#d99a1e", "#c0392b"


def _finite(scores: Iterable) -> np.ndarray:
    vals = []
    for s in scores or []:
        try:
            f = float(s)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            vals.append(f)
    return np.asarray(vals, dtype=np.float64)


def _bar_colours(edges: np.ndarray, similar: float | None, duplicate: float | None) -> list[str]:
    colours = []
    for left, right in zip(edges[:-1], edges[1:]):
        centre = (left + right) / 2
        if duplicate is not None and centre > duplicate:
            colours.append(_RED)
        elif similar is not None and centre > similar:
            colours.append(_AMBER)
        else:
            colours.append(_GREY)
    return colours


def _threshold_line(ax, x: float, colour: str, text: str) -> None:
    """A dashed vertical line with its label above the plot area, clear of the bars."""
    ax.axvline(x, color=colour, linestyle="--", linewidth=1.6)
    ax.annotate(f"{text} {x:.2f}", xy=(x, 1.0), xycoords=("data", "axes fraction"),
                xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                color=colour, fontsize=11, fontweight="bold")


def score_histogram_png(scores: Iterable, similar: float | None, duplicate: float | None,
                        bins: int = 40) -> bytes | None:
    """Histogram of best scores with the two thresholds as labelled vertical lines.

    Returns PNG bytes, or ``None`` when there is no finite score to plot.  The y axis
    turns logarithmic when the tallest bar dwarfs the smallest, so a handful of
    duplicates stays visible next to thousands of different images.
    """
    vals = _finite(scores)
    if vals.size == 0:
        return None
    # A bare Figure renders PNG through Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure

    lo = min(0.0, float(vals.min()))
    edges = np.linspace(lo, max(1.0, float(vals.max())), bins + 1)
    counts, _ = np.histogram(vals, bins=edges)
    # 2:1 with large type: the image is scaled down to ~400 px on a phone and must stay legible
    fig = Figure(figsize=(6.4, 3.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge",
           color=_bar_colours(edges, similar, duplicate), edgecolor="white", linewidth=0.5)
    nonzero = counts[counts > 0]
    if nonzero.size and nonzero.max() >= 20 * nonzero.min():
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel("candidates (log scale)", fontsize=12)
    else:
        ax.set_ylabel("candidates", fontsize=12)
    if similar is not None:
        _threshold_line(ax, similar, _AMBER, "similar")
    if duplicate is not None:
        _threshold_line(ax, duplicate, _RED, "duplicate")
    ax.set_xlabel("best score against the training cohort", fontsize=12)
    ax.tick_params(labelsize=11)
    ax.set_xlim(edges[0], edges[-1])
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    # No metadata: matplotlib otherwise writes its version and home-page URL into the PNG.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def memorization_png(copies: list[int], memorized_fraction: list[float], sample_share: list[float]) -> bytes:
    """Two bars per duplication level: the share of its training images the generator
    reproduced (at least one sample labelled duplicate) and the share of all samples that
    are copies of them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(copies))
    ax.bar(x - 0.2, np.asarray(memorized_fraction) * 100, 0.4, color=_RED, label="training images copied")
    ax.bar(x + 0.2, np.asarray(sample_share) * 100, 0.4, color=_GREY, label="samples that are copies of them")
    ax.set_xticks(x, [f"{c}×" for c in copies])
    ax.set_xlabel("times the image appears in the generator's training set", fontsize=12)
    ax.set_ylabel("%", fontsize=12)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=10, frameon=False, loc="upper left")
    ax.tick_params(labelsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def score_agreement_png(label_ssim: Iterable, gate_score: Iterable, similar: float, duplicate: float) -> bytes | None:
    """The gate's score against the label SSIM, one dot per sample, thresholds drawn on both axes."""
    from matplotlib.figure import Figure

    x, y = np.asarray(list(label_ssim), float), np.asarray(list(gate_score), float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    fig = Figure(figsize=(4.8, 4.8), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    lo = min(0.0, float(x[ok].min()), float(y[ok].min()))
    ax.plot([lo, 1], [lo, 1], color="#cbd2d9", linewidth=1)
    for cut, colour in ((similar, _AMBER), (duplicate, _RED)):
        ax.axvline(cut, color=colour, linestyle="--", linewidth=1)
        ax.axhline(cut, color=colour, linestyle="--", linewidth=1)
    ax.scatter(x[ok], y[ok], s=12, color="#334e68", alpha=0.7)
    ax.set_xlabel("label: SSIM through the generator's grid", fontsize=11)
    ax.set_ylabel("gate score", fontsize=11)
    ax.set_xlim(lo, 1.01)
    ax.set_ylim(lo, 1.01)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)
