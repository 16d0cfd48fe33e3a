"""DeepSSIM: a learned, alignment-robust SSIM for finding copies of training scans.

    import deepssim
    model = deepssim.load_default_model()
    model.score("a.png", "b.png")

This package is a plain library (no Prefect).  Heavy modules (torch, MONAI) load on
first use, so importing ``deepssim`` (and the CLI's ``--help``) stays fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_default_model": "api", "load_model": "api", "deepssim_score": "api", "DeepSSIM": "api",
    "load_image": "api", "reference_ssim": "metric.ssim", "ssim_targets": "metric.ssim",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'deepssim' has no attribute {name!r}")
