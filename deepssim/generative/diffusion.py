"""A small 2D diffusion model (MONAI ``DiffusionModelUNet``), trained with the DDPM
objective and sampled with deterministic DDIM.

Images are (N, size, size) float in [0, 1] on the generator's grid; the network works in
[-1, 1].  Small enough to train on two CPU cores in about an hour, which on a cohort with
duplicated images is enough for it to memorize them (``deepssim.generative.cohort``).
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class GeneratorConfig:
    """Network and noise schedule.  ``size``: the generator's grid (pixels a side)."""

    size: int = 64
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    norm_num_groups: int = 16
    num_head_channels: int = 32
    train_timesteps: int = 1000
    sample_steps: int = 50


@dataclass
class TrainedGenerator:
    """A trained generator: EMA weights, its config and what made it (free-form ``meta``)."""

    unet: torch.nn.Module
    config: GeneratorConfig
    meta: dict = field(default_factory=dict)


def build_unet(config: GeneratorConfig) -> torch.nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1,
                              num_res_blocks=config.num_res_blocks, channels=config.channels,
                              attention_levels=config.attention_levels,
                              norm_num_groups=config.norm_num_groups,
                              num_head_channels=config.num_head_channels)


def _scheduler(config: GeneratorConfig, kind: str):
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
    return cls(num_train_timesteps=config.train_timesteps, schedule="linear_beta")


def generator_loss(unet: torch.nn.Module, scheduler, batch: torch.Tensor, generator: torch.Generator
                   ) -> torch.Tensor:
    """DDPM noise-prediction MSE for ``batch`` (B, 1, S, S) in [-1, 1]."""
    noise = torch.randn(batch.shape, generator=generator).to(batch.device)
    steps = torch.randint(0, scheduler.num_train_timesteps, (batch.shape[0],), generator=generator)
    noisy = scheduler.add_noise(batch, noise, steps.to(batch.device))
    return torch.nn.functional.mse_loss(unet(noisy, steps.to(batch.device)), noise)


def train_generator(images: np.ndarray, config: GeneratorConfig, steps: int, batch_size: int = 32,
                    lr: float = 2e-4, ema_decay: float = 0.995, seed: int = 0,
                    time_budget_s: float | None = None, device: str = "cpu",
                    log: Callable[[str], None] = print, log_every: int = 50,
                    init: TrainedGenerator | None = None) -> tuple[TrainedGenerator, list[dict]]:
    """Train on ``images`` (N, size, size) in [0, 1] (repeat an image to weight it).

    Stops after ``steps`` optimizer steps or ``time_budget_s`` seconds, whichever first.
    ``init`` continues a trained generator (its EMA weights start both the network and the
    EMA; the optimizer starts afresh; steps are counted on from its ``steps_done``).
    Returns the EMA model and the loss history (one row per ``log_every`` steps: step, mean
    loss since the last row, seconds).
    """
    if images.ndim != 3 or images.shape[1:] != (config.size, config.size):
        raise ValueError(f"images must be (N, {config.size}, {config.size}), got {images.shape}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.asarray(images, np.float32) * 2 - 1).unsqueeze(1)
    unet = build_unet(config).to(device)
    done_before = 0
    if init is not None:
        if init.config != config:
            raise ValueError("init generator's config differs from the one asked for")
        unet.load_state_dict(init.unet.state_dict())
        done_before = int(init.meta.get("steps_done", 0))
    ema = copy.deepcopy(unet).eval()
    scheduler = _scheduler(config, "ddpm")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    history, running, start = [], [], time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        loss = generator_loss(unet, scheduler, data[idx].to(device), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(ema, unet, ema_decay)
        running.append(loss.item())
        elapsed = time.time() - start
        out_of_time = time_budget_s is not None and elapsed > time_budget_s
        if step % log_every == 0 or step == steps or out_of_time:
            history.append({"step": done_before + step, "loss": float(np.mean(running)), "seconds": round(elapsed, 1)})
            log(f"step {done_before + step} ({step}/{steps}) loss {history[-1]['loss']:.4f} {elapsed:.0f}s")
            running = []
        if out_of_time:
            log(f"time budget {time_budget_s:.0f}s reached at step {step}")
            break
    meta = {"steps_done": history[-1]["step"] if history else 0, "batch_size": batch_size, "lr": lr,
            "ema_decay": ema_decay, "seed": seed, "train_images": int(len(data))}
    return TrainedGenerator(ema.cpu(), config, meta), history


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


@torch.no_grad()
def sample_images(generator: TrainedGenerator, n: int, seed: int, batch_size: int = 100,
                  sample_steps: int | None = None, device: str = "cpu") -> np.ndarray:
    """``n`` samples (n, size, size) float32 in [0, 1], deterministic for ``seed``.

    DDIM with eta = 0: the only randomness is the starting noise, drawn per sample from
    ``seed`` on the CPU, so sample ``i`` is the same whatever ``batch_size`` or device.
    """
    config = generator.config
    scheduler = _scheduler(config, "ddim")
    scheduler.set_timesteps(sample_steps or config.sample_steps)
    unet = generator.unet.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 1, config.size, config.size), generator=gen)
    out = []
    for start in range(0, n, batch_size):
        x = noise[start:start + batch_size].to(device)
        for t in scheduler.timesteps:
            eps = unet(x, torch.full((x.shape[0],), int(t), device=device, dtype=torch.long))
            x, _ = scheduler.step(eps, int(t), x)
        out.append(((x.clamp(-1, 1) + 1) / 2).squeeze(1).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, config.size, config.size), np.float32)


def save_generator(generator: TrainedGenerator, path: Path) -> str:
    """Write weights (float16) to ``path`` and config + meta to ``path.with_suffix('.json')``.

    Returns the generator id (``generator-`` + 16 hex of the weights' SHA-256), also in the json.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({k: v.half() for k, v in generator.unet.state_dict().items()}, buffer)
    blob = buffer.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    path.write_bytes(blob)
    meta = dict(generator.meta, generator_id=f"generator-{digest[:16]}", sha256=digest,
                config=asdict(generator.config))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta["generator_id"]


def load_generator(path: Path) -> TrainedGenerator:
    """Load what ``save_generator`` wrote; refuses weights whose SHA-256 differs from the json."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise ValueError(f"{path.name}: weights do not match the sha256 in {path.with_suffix('.json').name}")
    raw = meta["config"]
    config = GeneratorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    unet = build_unet(config)
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    unet.load_state_dict({k: v.float() for k, v in state.items()})
    return TrainedGenerator(unet.eval(), config, meta)
