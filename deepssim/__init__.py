"""DeepSSIM: a learned, alignment-robust SSIM for finding copies of training scans.

    import deepssim
    model = deepssim.load_default_model()
    model.score("a.png", "b.png")

This package is a plain library (no Prefect).  Heavy modules (torch, MONAI) load on
first use, so importing ``deepssim`` (and the CLI's ``--help``) stays fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

from deepssim._exports import lazy_exports

__getattr__, __dir__, _public = lazy_exports(__name__, {
    "api": ["DeepSSIM", "deepssim_score", "load_default_model", "load_image", "load_model"],
    "metric.ssim": ["reference_ssim", "ssim_targets"],
})
__all__ = _public + ["__version__"]
