"""Embedding throughput of a DeepSSIM checkpoint (default: the shipped model).

    python benchmarks/embed_throughput.py [--device auto|cpu|cuda] [--batch 256] [--images 4096]

Prints one JSON line: device, batch, images, images/s (median of repeats after warm-up).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(checkpoint: str | None, device: str, batch: int, images: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from deepssim.checkpoint import DEFAULT_MODEL, load_checkpoint
    from deepssim.embed import Embedder

    model, meta = load_checkpoint(checkpoint or DEFAULT_MODEL)
    emb = Embedder(model, device=device, batch_size=batch)
    size = meta.encoder.input_size
    data = np.random.default_rng(0).random((images, size, size), dtype=np.float32)
    if emb._device.type == "cuda":
        # keep host->device copies out of the GPU figure: stage the data on the device once
        data = torch.from_numpy(data).to(emb._device)
    emb.embed_batch(data[:batch])
    rates = []
    for _ in range(repeats):
        if emb._device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, images, batch):
            emb.embed_batch(data[i:i + batch])
        if emb._device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(images / (time.perf_counter() - t0))
    return {"device": str(emb._device), "threads": torch.get_num_threads(), "batch": batch,
            "images": images, "input_size": size, "model": meta.model_id,
            "images_per_s": round(statistics.median(rates), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(json.dumps(measure(a.checkpoint, a.device, a.batch, a.images, a.repeats)))


if __name__ == "__main__":
    main()
