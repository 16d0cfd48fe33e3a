"""Training DeepSSIM: MSE between the cosine of two independently augmented views and
the aligned SSIM of the unaugmented pair.

``train`` is a plain loop (AdamW, warm-up + cosine schedule, AMP on CUDA) that
validates on held-out subjects at fixed intervals and keeps the best weights.
``evaluate`` computes the metrics the project reports: MAE to the aligned SSIM on
unaugmented and augmented pairs, overall and per SSIM band, Spearman, the rate at which
flipped/rotated/re-contrasted copies score as duplicates, and the rate at which
dissimilar other-subject pairs stay below the similar threshold.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from deepssim.metric.augment import Compose, RandomAffine, RandomDihedral, RandomGamma, nuisance_augment
from deepssim.config import EncoderConfig
from deepssim.metric.embed import resolve_device, resolve_precision
from deepssim.metric.model import DeepSSIMEncoder, cosine_scores
from deepssim.metric.pairs import ImagePool, PairMix, PairSampler


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.  ``time_budget_s`` caps wall time: the schedule is fitted to
    the number of steps measured to fit in the budget (after 80 steps), and training stops
    when the budget is spent whatever the step (a slow machine may not reach step 80).
    ``heartbeat_s``: at least this often a ``step N/TOTAL`` progress line is logged."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    eval_every: int = 250
    eval_pairs: int = 1024
    augment_strength: float = 1.0
    time_budget_s: float | None = None
    heartbeat_s: float = 15.0
    device: str = "auto"
    amp: bool = True
    mix: PairMix = field(default_factory=PairMix)


def copy_transform() -> Compose:
    """A flipped + rotated (±10°) + contrast-changed (gamma 0.5–1.6) copy."""
    return Compose([RandomDihedral(p_flip=0.75, p_turn=0.0), RandomAffine(10.0, 0.0, (1.0, 1.0)),
                    RandomGamma((0.5, 1.6))])


@dataclass
class EvalSet:
    """Fixed held-out data, all (N, 1, S, S): balanced aligned pairs with their target,
    the same pairs nuisance-augmented, originals with their flipped/rotated/re-contrasted
    copies, and different-subject pairs whose aligned SSIM is <= 0.60."""

    a: torch.Tensor
    b: torch.Tensor
    target: torch.Tensor
    aug_a: torch.Tensor
    aug_b: torch.Tensor
    originals: torch.Tensor
    copies: torch.Tensor
    diff_a: torch.Tensor
    diff_b: torch.Tensor


def make_eval_set(pool: ImagePool, n_pairs: int = 1024, seed: int = 1234,
                  augment_strength: float = 1.0) -> EvalSet:
    """Draw a reproducible :class:`EvalSet` from ``pool`` (use held-out subjects)."""
    a, b, target = PairSampler(pool, PairMix(), seed=seed).draw(n_pairs)
    gen = torch.Generator(device=a.device).manual_seed(seed + 1)
    aug = nuisance_augment(augment_strength)
    # repeat the pool when it is smaller than n_pairs: every copy is a different transform
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    pick = order.repeat(-(-n_pairs // len(pool)))[:n_pairs]
    originals = pool.images[pick.to(pool.images.device)]
    only_others = PairMix(identical=0, edited=0, neighbour=0, same_subject=0, other_subject=1)
    da, db, dt, _ = PairSampler(pool, only_others, seed=seed + 2).draw_raw(n_pairs * 2)
    keep = dt <= 0.60
    return EvalSet(a=a, b=b, target=target, aug_a=aug(a, gen), aug_b=aug(b, gen),
                   originals=originals, copies=copy_transform()(originals, gen),
                   diff_a=da[keep][:n_pairs], diff_b=db[keep][:n_pairs])


def _embed(model: DeepSSIMEncoder, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    outs = []
    for i in range(0, len(x), batch):
        outs.append(model(x[i:i + batch]))
    return torch.cat(outs)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


@torch.no_grad()
def evaluate(model: DeepSSIMEncoder, ev: EvalSet) -> dict:
    """Metrics on a fixed :class:`EvalSet` (see module docstring)."""
    was_training = model.training
    model.eval()
    t = ev.target.cpu().numpy()
    aligned = cosine_scores(_embed(model, ev.a), _embed(model, ev.b)).cpu().numpy()
    augmented = cosine_scores(_embed(model, ev.aug_a), _embed(model, ev.aug_b)).cpu().numpy()
    copy_scores = cosine_scores(_embed(model, ev.originals), _embed(model, ev.copies)).cpu().numpy()
    err = np.abs(augmented - t)
    bands = {"le_0.60": t <= 0.60, "0.60_0.85": (t > 0.60) & (t <= 0.85), "gt_0.85": t > 0.85}
    metrics = {
        "pairs": int(len(t)),
        "mae_aligned": float(np.abs(aligned - t).mean()),
        "mae_augmented": float(err.mean()),
        "spearman_aligned": _spearman(aligned, t),
        "spearman_augmented": _spearman(augmented, t),
        "mae_augmented_by_band": {k: float(err[m].mean()) if m.any() else None for k, m in bands.items()},
        "copy_rate_gt_0.85": float((copy_scores > 0.85).mean()),
    }
    diff = cosine_scores(_embed(model, ev.diff_a), _embed(model, ev.diff_b)).cpu().numpy()
    metrics["different_pairs"] = int(len(diff))
    metrics["different_rate_le_0.60"] = float((diff <= 0.60).mean()) if len(diff) else None
    model.train(was_training)
    return metrics


@dataclass
class TrainResult:
    model: DeepSSIMEncoder
    metrics: dict
    history: list[dict]
    best_step: int
    steps: int
    seconds: float
    config: dict


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


def train_encoder(train_pool: ImagePool, val_pool: ImagePool, config: TrainConfig = TrainConfig(),
          encoder: EncoderConfig = EncoderConfig(), init_state: dict | None = None,
          log: Callable[[str], None] = print,
          on_best: Callable[[DeepSSIMEncoder, dict, int], None] | None = None) -> TrainResult:
    """Train an encoder; returns the best weights by validation MAE (augmented pairs)."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = DeepSSIMEncoder(encoder)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device).train()
    train_pool, val_pool = train_pool.to(device), val_pool.to(device)
    sampler = PairSampler(train_pool, config.mix, seed=config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed + 7)
    augment = nuisance_augment(config.augment_strength)
    ev = make_eval_set(val_pool, config.eval_pairs, augment_strength=config.augment_strength)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # bfloat16 autocast where the hardware has it (CUDA, AVX512-BF16/AMX CPUs): the shipped
    # model's recipe, and 1.6x faster than float32 on the 2-core CPU (BENCHMARKS.md)
    use_amp = config.amp and resolve_precision("auto", device) == torch.bfloat16
    log(f"training arithmetic on {device}: {'bfloat16 autocast' if use_amp else 'float32'}")

    total, start = config.steps, time.perf_counter()
    best = (float("inf"), -1, copy.deepcopy(model.state_dict()), {})
    history: list[dict] = []
    step, running, beat = 0, 0.0, start
    while step < total:
        for g in opt.param_groups:
            g["lr"] = config.lr * _lr_factor(step, total, config.warmup_steps)
        a, b, target = sampler.draw(config.batch_size)
        with torch.no_grad():
            va, vb = augment(a, gen), augment(b, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            score = cosine_scores(model(va), model(vb))
        loss = torch.nn.functional.mse_loss(score.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item() if step % 10 == 0 else 0.0
        step += 1
        elapsed = time.perf_counter() - start
        if step == 20:
            rate_start = (step, elapsed)
        if config.time_budget_s and step == 80:
            # measured after warm-up (first steps include compilation and allocator growth)
            per_step = (elapsed - rate_start[1]) / (step - rate_start[0])
            fitted = step + int((config.time_budget_s - elapsed) / per_step * 0.95)
            total = max(step + 1, min(config.steps, fitted))
            log(f"time budget {config.time_budget_s:.0f}s: schedule fitted to {total} steps")
        if config.time_budget_s and elapsed >= config.time_budget_s and step < total:
            total = step
            log(f"time budget {config.time_budget_s:.0f}s spent at step {step}: stopping")
        if time.perf_counter() - beat >= config.heartbeat_s and step % config.eval_every and step < total:
            beat = time.perf_counter()
            log(f"step {step}/{total} {elapsed:.0f}s (training; next evaluation at step "
                f"{min(total, (step // config.eval_every + 1) * config.eval_every)})")
        if step % config.eval_every == 0 or step == total:
            metrics = evaluate(model, ev)
            metrics.update(step=step, seconds=round(elapsed, 1), train_loss=running / max(1, config.eval_every / 10))
            running = 0.0
            history.append(metrics)
            log(f"step {step}/{total} {elapsed:.0f}s loss {metrics['train_loss']:.4f} "
                f"val mae aligned {metrics['mae_aligned']:.3f} aug {metrics['mae_augmented']:.3f} "
                f"rho {metrics['spearman_augmented']:.3f} copies {metrics['copy_rate_gt_0.85']:.3f} "
                f"diff {metrics['different_rate_le_0.60'] or float('nan'):.3f}")
            # the gate cares most that copies score as copies: below 98 % copy recall, each
            # missing point costs as much as 0.01 of MAE
            criterion = metrics["mae_augmented"] + max(0.0, 0.98 - metrics["copy_rate_gt_0.85"])
            if criterion < best[0]:
                best = (criterion, step, copy.deepcopy(model.state_dict()), metrics)
                if on_best is not None:
                    on_best(model, metrics, step)
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model=model.cpu(), metrics=best[3], history=history, best_step=best[1],
                       steps=step, seconds=time.perf_counter() - start,
                       config={"train": asdict(config), "encoder": asdict(encoder)})
