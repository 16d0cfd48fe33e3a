"""Batched embedding of preprocessed images.

:class:`Embedder` wraps a loaded encoder with the inference settings that matter for
throughput: ``torch.inference_mode``, channels-last memory, folded BatchNorm, batches,
and the arithmetic precision.  ``device="auto"`` picks CUDA when present, else CPU;
``precision="auto"`` runs bfloat16 autocast where the hardware computes it natively
(CUDA, or a CPU with AVX512-BF16 / AMX) and float32 elsewhere, where emulated bfloat16
would be slower than float32.  On the shipped model bfloat16 moves a cosine score by at
most 0.005 (mean 0.001) and its MAE to the aligned SSIM by 0.0003, and embeds 1.6-1.8x
faster on the 2-core AVX512-BF16 CPU (BENCHMARKS.md, "Embedding throughput").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from deepssim.config import check_precision
from deepssim.metric.model import DeepSSIMEncoder


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bfloat16() -> bool:
    """True when this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private probes: absent in some torch builds -> be safe
        return False


def inference_settings(device: str = "auto", precision: str = "auto") -> dict[str, str]:
    """Device and precision that ``device`` / ``precision`` resolve to on this machine."""
    dev = resolve_device(device)
    return {"device": str(dev), "precision": str(resolve_precision(precision, dev)).removeprefix("torch.")}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` as asked; ``"auto"`` -> bfloat16 on CUDA and on CPUs
    with native bfloat16, float32 otherwise."""
    if check_precision(precision) == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16())
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


@dataclass
class Embedder:
    """Embed (N, S, S) float32 arrays in [0, 1] into (N, D) float32 unit vectors."""

    model: DeepSSIMEncoder
    device: str = "auto"
    batch_size: int = 256
    precision: str = "auto"
    fuse_batchnorm: bool = True

    def __post_init__(self) -> None:
        self._device = resolve_device(self.device)
        self._dtype = resolve_precision(self.precision, self._device)
        self.model = self.model.to(self._device).eval().to(memory_format=torch.channels_last)
        if self.fuse_batchnorm:
            self.model = fold_batchnorm(self.model)

    @property
    def input_size(self) -> int:
        return self.model.config.input_size

    @property
    def resolved(self) -> dict[str, str]:
        """The device and precision this embedder actually runs, e.g. for a report."""
        return inference_settings(str(self._device), self.precision)

    @torch.inference_mode()
    def embed_batch(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """One batch (B, S, S) or (B, 1, S, S) -> (B, D) float32."""
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.to(self._device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        low = self._dtype != torch.float32
        with torch.autocast(self._device.type, dtype=self._dtype, enabled=low):
            out = self.model(x)
        return out.float().cpu().numpy()

    def embed(self, images: np.ndarray | Iterable[np.ndarray],
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """All images -> (N, D) float32; ``progress(n_done)`` is called after each batch."""
        if isinstance(images, np.ndarray):
            chunks = (images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size))
        else:
            chunks = _batched(images, self.batch_size)
        outs, done = [], 0
        for chunk in chunks:
            outs.append(self.embed_batch(chunk))
            done += len(chunk)
            if progress:
                progress(done)
        dim = self.model.config.embedding_dim
        return np.concatenate(outs) if outs else np.zeros((0, dim), np.float32)


def fold_batchnorm(model: DeepSSIMEncoder) -> DeepSSIMEncoder:
    """Fold each BatchNorm into the convolution before it (inference only).

    Measured 1.2–1.4× faster on the 2-core CPU with outputs equal to 1e-6; the model's
    own weights are left untouched (a folded copy is returned)."""
    import copy

    from torch.fx.experimental.optimization import fuse

    folded = copy.deepcopy(model)
    folded.backbone = fuse(folded.backbone)
    return folded


def _batched(items: Iterable[np.ndarray], size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
