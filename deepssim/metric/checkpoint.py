"""Checkpoints: weights + JSON sidecar (config, sha256, training summary, metrics).

A checkpoint is two files, ``NAME.pt`` (the state dict) and ``NAME.json``.  The JSON
records the sha256 of the ``.pt`` file; :func:`load_checkpoint` recomputes it and
refuses a file that does not match (tampered, truncated or swapped weights).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepssim.config import EncoderConfig

FORMAT_VERSION = 1
DEFAULT_MODEL = Path(__file__).parents[1] / "models" / "deepssim-default.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match its recorded hash."""


@dataclass
class CheckpointMeta:
    """What the JSON sidecar holds.  ``model_id`` is the first 16 hex digits of sha256."""

    encoder: EncoderConfig
    sha256: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def model_id(self) -> str:
        return f"deepssim-{self.sha256[:16]}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_id"] = self.model_id
        return data


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


def save_checkpoint(model, path: str | os.PathLike, training: dict | None = None,
                    metrics: dict | None = None) -> CheckpointMeta:
    """Write ``path`` (.pt) and its JSON sidecar atomically; return the metadata."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # serialised in memory: torch.save to a path names the archive after the file, and the
    # temporary file's name is random — equal weights must give equal bytes (the model id)
    payload = io.BytesIO()
    torch.save(state, payload)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".pt.tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(payload.getvalue())
    os.replace(tmp, path)
    meta = CheckpointMeta(encoder=model.config, sha256=file_sha256(path),
                          training=training or {}, metrics=metrics or {})
    tmp_json = sidecar_path(path).with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta.to_json(), indent=2, sort_keys=True))
    os.replace(tmp_json, sidecar_path(path))
    return meta


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Read and check the sidecar of ``path`` without loading weights."""
    side = sidecar_path(path)
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint weights not found: {path}")
    if not side.is_file():
        raise CheckpointError(f"checkpoint sidecar not found: {side}")
    try:
        data = json.loads(side.read_text())
        meta = CheckpointMeta(encoder=EncoderConfig.from_dict(data["encoder"]), sha256=data["sha256"],
                              training=data.get("training", {}), metrics=data.get("metrics", {}),
                              format_version=data.get("format_version", FORMAT_VERSION))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"malformed checkpoint sidecar {side}: {exc}") from exc
    if meta.format_version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {meta.format_version} is newer than this "
                              f"library understands ({FORMAT_VERSION})")
    return meta


def load_checkpoint(path: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu"):
    """Load a verified encoder in eval mode.  Returns ``(model, meta)``.

    Raises :class:`CheckpointError` when the weights' sha256 differs from the sidecar's.
    """
    import torch

    from deepssim.metric.model import DeepSSIMEncoder

    meta = read_meta(path)
    actual = file_sha256(path)
    if actual != meta.sha256:
        raise CheckpointError(
            f"checkpoint {path} fails its integrity check: sha256 {actual[:16]}… does not "
            f"match the recorded {meta.sha256[:16]}… (tampered or corrupted weights)")
    model = DeepSSIMEncoder(meta.encoder)
    state = torch.load(path, map_location=device, weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: the weights do not fit the encoder its sidecar "
                              f"describes ({meta.encoder}): {exc}") from exc
    return model.to(device).eval(), meta
