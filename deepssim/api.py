"""The researcher's entry points: load a model, embed images, score two images.

    import deepssim
    model = deepssim.load_default_model()
    print(model.score("a.png", "b.png"))      # or two numpy arrays

Images may be paths (any format the ingestion reads, holding one 2D slice; read by the
readers) or 2D numpy arrays (any dtype; percentile-windowed like the readers do).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepssim.metric.checkpoint import DEFAULT_MODEL, CheckpointMeta, load_checkpoint
from .config import IngestConfig
from .preprocess import to_model_input


def load_image(path: str | os.PathLike, size: int = 128, config: IngestConfig = IngestConfig()) -> np.ndarray:
    """Read one 2D image file into the model's input: (size, size) float32 in [0, 1].

    Raises ValueError with the ingestion's reason when the file cannot be used, or when it
    holds more than one slice (give a 2D image)."""
    from .io import ingest

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="deepssim-img-") as tmp:
        result = ingest([path], config, size, Path(tmp), root=path.parent)
        ok = result.ok
        if len(ok) == 0:
            reasons = "; ".join(result.quarantined["reason"].astype(str)) or "no image found"
            raise ValueError(f"{path}: {reasons}")
        if len(ok) > 1:
            raise ValueError(f"{path} holds {len(ok)} slices: give a 2D image")
        return np.array(result.pixels()[int(ok["row"].iloc[0])], dtype=np.float32)


def as_model_input(image, size: int = 128) -> np.ndarray:
    """A path or a 2D array -> (size, size) float32 in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, size)
    image = np.asarray(image)
    if image.dtype == np.float32 and image.shape == (size, size) and image.min() >= 0 and image.max() <= 1:
        return image
    return to_model_input(image, size)


@dataclass
class DeepSSIM:
    """A loaded, verified DeepSSIM encoder (module form of the metric)."""

    encoder: object
    meta: CheckpointMeta
    device: str = "auto"
    batch_size: int = 256
    precision: str = "auto"  # of the arithmetic: auto | float32 | bfloat16 (deepssim.metric.embed)
    _embedder: object = field(default=None, repr=False)

    @property
    def model_id(self) -> str:
        return self.meta.model_id

    @property
    def input_size(self) -> int:
        return self.meta.encoder.input_size

    @property
    def embedder(self):
        if self._embedder is None:
            from deepssim.metric.embed import Embedder

            self._embedder = Embedder(self.encoder, device=self.device, batch_size=self.batch_size,
                                      precision=self.precision)
        return self._embedder

    def embed(self, images) -> np.ndarray:
        """Paths, 2D arrays, or an (N, S, S) array in [0, 1] -> (N, D) float32 unit vectors."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            batch = images.astype(np.float32, copy=False)
        else:
            batch = np.stack([as_model_input(im, self.input_size) for im in images])
        return self.embedder.embed(batch)

    def score(self, a, b) -> float:
        """DeepSSIM of two images: cosine of their embeddings, about their aligned SSIM."""
        ea, eb = self.embed([a, b])
        return float(np.dot(ea, eb))


def load_model(path: str | os.PathLike = DEFAULT_MODEL, device: str = "auto", precision: str = "auto") -> DeepSSIM:
    """Load and integrity-check a checkpoint (see :mod:`deepssim.metric.checkpoint`)."""
    encoder, meta = load_checkpoint(path)
    return DeepSSIM(encoder, meta, device=device, precision=precision)


def load_default_model(device: str = "auto", precision: str = "auto") -> DeepSSIM:
    """The model shipped with the package (``deepssim/models/deepssim-default.pt``)."""
    return load_model(DEFAULT_MODEL, device, precision)


def deepssim_score(a, b, model: DeepSSIM | None = None) -> float:
    """Functional form: DeepSSIM score of two images with ``model`` (default model if None)."""
    return (model or load_default_model()).score(a, b)
