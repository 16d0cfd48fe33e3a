"""Probe: would a larger head on the shipped encoder's features approximate SSIM better?

Session 5's question before spending training time: is the shipped model's error (MAE 0.13 /
0.15 on the validation subjects) a matter of the head's capacity — a global average pool
followed by one linear layer throws away where things are — or of how its features
generalise to subjects it never saw?  The probe freezes the shipped encoder up to layer 3,
caches its feature maps for nuisance-augmented training pairs (the trainer's own sampler,
pair mix and augmentation, training-side subjects only), fits a new head on the cache and
validates it exactly as the trainer does (:func:`deepssim.metric.train.evaluate`, the validation
set of ``train_default.py``, seed 1234).  Heads (each starts as the shipped function):

* ``pool``        the shipped head (global average pool -> linear), refitted;
* ``grid``        layer 4's 4x4 map flattened -> linear (16x the head's inputs);
* ``pool+layer4`` the shipped head with layer 4 trainable too.

    python scripts/frozen_feature_probe.py cache runs/pool.npz runs/probe.pt --pairs 40000 --seed 11
    python scripts/frozen_feature_probe.py fit runs/pool.npz runs/probe.pt --head grid --epochs 6 --lr 1e-3

Prints the validation metrics of the initial head and after every epoch, with the training
loss: a training loss that falls while validation does not improve means the head can fit
more but the features do not carry it to new subjects.  Results: deepssim/models/TRAINING.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import train_default  # noqa: E402  (split_by_subject, the trainer's data)
from deepssim.metric.augment import nuisance_augment  # noqa: E402
from deepssim.metric.checkpoint import load_checkpoint  # noqa: E402
from deepssim.metric.model import DeepSSIMEncoder, canonical_flips, cosine_scores  # noqa: E402
from deepssim.metric.pairs import PairMix, PairSampler  # noqa: E402
from deepssim.metric.train import TrainConfig, evaluate, make_eval_set  # noqa: E402
from deepssim.metric.trainingdata import ImageSet, package_image_tiles, phantoms  # noqa: E402

HEADS = ("pool", "grid", "pool+layer4")


def pools(pool_path: Path, phantom_seed: int = 1):
    """Training and validation pools as stages 2-3 of the shipped model saw them."""
    real = ImageSet.load(pool_path)
    extra = phantoms(240, seed=phantom_seed).extend(package_image_tiles())
    train_pool, val_pool, _, _ = train_default.split_by_subject(ImageSet().extend(real).extend(extra))
    return train_pool, val_pool


class FrozenStem(nn.Module):
    """The shipped encoder up to layer 3: (B, 1, 128, 128) in [0, 1] -> (B, 128, 8, 8)."""

    def __init__(self, encoder: DeepSSIMEncoder, bfloat16: bool = False):
        super().__init__()
        self.encoder, self.bfloat16 = encoder.eval(), bfloat16

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net = self.encoder.backbone
        if self.encoder.config.canonical_flips:
            images = canonical_flips(images)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        # bfloat16 when caching training pairs, as the trainer computes; float32 when validating, as evaluate() does
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
            x = net.maxpool(net.act(net.bn1(net.conv1((images - mean) / std))))
            return net.layer3(net.layer2(net.layer1(x))).float()


class Head(nn.Module):
    """Layer 4 + a head on (B, 128, 8, 8) maps -> (B, D) unit embeddings; initialised so that
    stem + head is exactly the shipped encoder."""

    def __init__(self, encoder: DeepSSIMEncoder, kind: str):
        super().__init__()
        self.kind = kind
        self.layer4 = copy.deepcopy(encoder.backbone.layer4).requires_grad_(kind == "pool+layer4")
        shipped = encoder.backbone.fc
        self.fc = copy.deepcopy(shipped)
        if kind == "grid":  # mean over 16 cells == each cell weighted 1/16
            self.fc = nn.Linear(shipped.in_features * 16, shipped.out_features)
            with torch.no_grad():
                self.fc.weight.copy_(shipped.weight.repeat_interleave(16, dim=1) / 16)
                self.fc.bias.copy_(shipped.bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = self.layer4(maps.float())
        x = x.flatten(1) if self.kind == "grid" else x.mean(dim=(2, 3))
        return nn.functional.normalize(self.fc(x), dim=1)


def features(stem: FrozenStem, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([stem(images[i:i + batch]).to(torch.float16) for i in range(0, len(images), batch)])


def cache(pool_path: Path, out: Path, n_pairs: int, seed: int) -> None:
    encoder, meta = load_checkpoint()
    stem = FrozenStem(encoder, bfloat16=True)
    train_pool, _ = pools(pool_path)
    sampler, augment = PairSampler(train_pool, PairMix(), seed=seed), nuisance_augment()
    gen = torch.Generator().manual_seed(seed + 7)
    maps_a, maps_b, targets, start = [], [], [], time.perf_counter()
    for done in range(0, n_pairs, 512):
        a, b, target = sampler.draw(512)
        maps_a.append(features(stem, augment(a, gen)))
        maps_b.append(features(stem, augment(b, gen)))
        targets.append(target)
        print(f"{done + 512} pairs cached, {time.perf_counter() - start:.0f}s", flush=True)
    torch.save({"model_id": meta.model_id, "seed": seed, "a": torch.cat(maps_a), "b": torch.cat(maps_b),
                "target": torch.cat(targets)}, out)


def fit(pool_path: Path, cache_path: Path, kind: str, epochs: int, lr: float, batch: int = 512) -> None:
    torch.manual_seed(0)
    encoder, meta = load_checkpoint()
    data = torch.load(cache_path)
    if data["model_id"] != meta.model_id:
        raise SystemExit(f"{cache_path} holds features of {data['model_id']}, not of {meta.model_id}")
    stem, head = FrozenStem(encoder), Head(encoder, kind)
    _, val_pool = pools(pool_path)
    ev = make_eval_set(val_pool, TrainConfig().eval_pairs)
    probe = nn.Sequential(stem, head)

    def report(label: str) -> None:
        m = evaluate(probe, ev)
        print(f"{label}: val MAE aligned {m['mae_aligned']:.4f} augmented {m['mae_augmented']:.4f} "
              f"rho {m['spearman_aligned']:.3f}/{m['spearman_augmented']:.3f} "
              f"copies {m['copy_rate_gt_0.85']:.3f} different {m['different_rate_le_0.60']:.3f}", flush=True)

    report(f"{kind} head as shipped")
    maps_a, maps_b, target = data["a"], data["b"], data["target"]
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    per_epoch = len(target) // batch
    for epoch in range(epochs):
        head.train()
        order, total = torch.randperm(len(target)), 0.0
        for i in range(per_epoch):
            step = epoch * per_epoch + i
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / (epochs * per_epoch)))
            idx = order[i * batch:(i + 1) * batch]
            loss = nn.functional.mse_loss(cosine_scores(head(maps_a[idx]), head(maps_b[idx])), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        head.eval()
        report(f"epoch {epoch + 1} train loss {total / per_epoch:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="cache frozen layer-3 maps of augmented training pairs")
    c.add_argument("pool", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--pairs", type=int, default=40000)
    c.add_argument("--seed", type=int, default=11)
    f = sub.add_parser("fit", help="fit a head on a cache, validating every epoch")
    f.add_argument("pool", type=Path)
    f.add_argument("cache", type=Path)
    f.add_argument("--head", choices=HEADS, default="pool")
    f.add_argument("--epochs", type=int, default=4)
    f.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.command == "cache":
        cache(args.pool, args.out, args.pairs, args.seed)
    else:
        fit(args.pool, args.cache, args.head, args.epochs, args.lr)


if __name__ == "__main__":
    main()
