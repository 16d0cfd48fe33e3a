"""Embedding throughput of a DeepSSIM checkpoint (default: the shipped model).

    python benchmarks/embed_throughput.py [--device auto|cpu|cuda] [--precision auto|float32|bfloat16]
                                          [--batch 256] [--images 4096] [--compare]

Prints one JSON line per setting: device, precision as resolved, batch, images, images/s
(median of repeats after warm-up).  ``--compare`` measures float32 and bfloat16 in the same
run (alternating, so both see the same machine load) and adds their ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(checkpoint: str | None, device: str, precision: str, batch: int, images: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from deepssim.metric.checkpoint import DEFAULT_MODEL, load_checkpoint
    from deepssim.metric.embed import Embedder

    model, meta = load_checkpoint(checkpoint or DEFAULT_MODEL)
    emb = Embedder(model, device=device, batch_size=batch, precision=precision)
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
    return {**emb.resolved, "threads": torch.get_num_threads(), "batch": batch,
            "images": images, "input_size": size, "model": meta.model_id,
            "images_per_s": round(statistics.median(rates), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto | float32 | bfloat16")
    ap.add_argument("--compare", action="store_true", help="float32 and bfloat16, alternating, plus ratio")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if not a.compare:
        print(json.dumps(measure(a.checkpoint, a.device, a.precision, a.batch, a.images, a.repeats)))
        return
    runs: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(a.repeats):  # alternate so that load on a shared machine hits both alike
        for precision in runs:
            res = measure(a.checkpoint, a.device, precision, a.batch, a.images, 1)
            runs[precision].append(res["images_per_s"])
            print(json.dumps(res), flush=True)
    rates = {p: statistics.median(r) for p, r in runs.items()}
    print(json.dumps({"median_images_per_s": rates, "bfloat16_over_float32": round(rates["bfloat16"] / rates["float32"], 2)}))


if __name__ == "__main__":
    main()
