"""HTML audit reports for the DeepSSIM memorization gate (jinja2 + matplotlib; no prefect)."""
from .images import data_uri, png_bytes
from .report import render_html, render_report

__all__ = ["render_report", "render_html", "png_bytes", "data_uri"]
