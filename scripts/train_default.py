"""Train the shipped default DeepSSIM model.

    python scripts/train_default.py build-pool POOL.npz          # CPU, here: real slices
    python scripts/train_default.py train POOL.npz OUT_DIR [--budget S] [--device D]
    python scripts/train_default.py canonical-flips POOL.npz CHECKPOINT.pt OUT_DIR

``build-pool`` gathers the real training/validation images (../shared/data slices and
volumes, deepssim_extra_data/) into one npz.  ``train`` adds procedural phantoms and
package image tiles, splits by subject (HELD_OUT below never enters training), trains
with the DeepSSIM objective and writes ``OUT_DIR/deepssim-default.pt`` + ``.json`` and
``OUT_DIR/train_log.txt``.  ``canonical-flips`` writes the same weights with
``EncoderConfig.canonical_flips`` on (a new model id), validated like ``train`` does.  The
shipped weights were produced by the commands recorded in ``deepssim/models/TRAINING.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepssim.config import EncoderConfig  # noqa: E402
from deepssim.metric.pairs import PairMix  # noqa: E402
from deepssim.metric.trainingdata import (ImageSet, as_pool, package_image_tiles, phantoms,  # noqa: E402
                                   read_slice_folder, read_volume_all_axes)

SHARED = ROOT.parent / "shared" / "data"
EXTRA = ROOT / "deepssim_extra_data"
# Subjects never used for training: they measure generalisation (other scanners and
# contrasts).  Extra-data subjects whose name starts with "holdout_" are held out too.
HELD_OUT = {"nibabel_anatomical", "heudiconv_crlab", "dipy_t1_coronal",  # MR: other scanners
            "prad_ct_lung2", "pdd_ct_pancreas0001",  # CT
            "prad_mr_brain2", "pdd_mr_abdomen_siemens",  # MR: tumour brain, abdomen
            "pdd_cr_chest_rg1", "pdd_us_ge_us1"}  # radiograph, ultrasound


def build_pool(out: Path) -> None:
    images = read_slice_folder(SHARED)
    images.extend(read_volume_all_axes(SHARED / "volumes" / "colin27_t1.nii.gz", "colin27", stride=3))
    images.extend(read_volume_all_axes(SHARED / "volumes" / "mni152_2009_t1.nii.gz",
                                       "icbm152_2009_template", stride=3))
    if (EXTRA / "manifest.csv").is_file():
        images.extend(read_slice_folder(EXTRA))
    images.save(out)
    print(f"pool: {len(images)} real images, {len(set(images.subjects))} subjects -> {out}")


def is_held_out(name: str) -> bool:
    return name in HELD_OUT or name.startswith("holdout_")


def split_by_subject(images: ImageSet):
    """``(train_pool, validation_pool, train_subjects, validation_subjects)``: the HELD_OUT
    subjects validate, all others train — split by subject, never by slice."""
    names = set(images.subjects)
    train_names = {s for s in names if not is_held_out(s)}
    val_names = names - train_names
    pool = as_pool(images)
    return pool.select_subjects(train_names), pool.select_subjects(val_names), train_names, val_names


def train_model(pool_path: Path, out_dir: Path, budget: float, device: str, steps: int,
                batch: int, n_phantoms: int, seed: int, init: Path | None = None, lr: float = 2e-3,
                mix: dict[str, float] | None = None, canonical_flips: bool = False) -> None:
    import torch

    from deepssim.metric.checkpoint import save_checkpoint
    from deepssim.metric.train import TrainConfig, train_encoder

    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(out_dir / "train_log.txt", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    log("command: " + " ".join(sys.argv))
    real = ImageSet.load(pool_path)
    extra = phantoms(n_phantoms, seed=seed).extend(package_image_tiles())
    everything = ImageSet().extend(real).extend(extra)
    train_pool, val_pool, train_names, val_names = split_by_subject(everything)
    summary = {
        "train_images": len(train_pool), "train_subjects": len(train_names),
        "validation_images": len(val_pool), "validation_subjects": sorted(val_names),
        "real_training_images": sum(1 for s in real.subjects if s in train_names),
        "phantom_volumes": n_phantoms, "package_tiles": sum(1 for s in extra.subjects if s.startswith("skimage_")),
    }
    log("data: " + json.dumps(summary))
    config = TrainConfig(steps=steps, batch_size=batch, time_budget_s=budget, device=device, seed=seed, lr=lr,
                         eval_every=250 if device != "cpu" else 100, mix=PairMix(**(mix or {})))
    torch.set_float32_matmul_precision("high")

    def checkpoint(model, metrics, step):
        save_checkpoint(model, out_dir / "deepssim-default.pt",
                        training={**summary, "best_step": step, "command": " ".join(sys.argv)},
                        metrics=metrics)

    init_state, encoder = None, EncoderConfig(canonical_flips=canonical_flips)
    if init:
        from deepssim.metric.checkpoint import load_checkpoint
        from deepssim.metric.model import with_canonical_flips

        init_model, init_meta = load_checkpoint(init)
        if canonical_flips and not init_model.config.canonical_flips:
            init_model = with_canonical_flips(init_model)
        init_state, encoder = init_model.state_dict(), init_model.config
        summary["fine_tuned_from"] = init_meta.model_id
        log(f"fine-tuning from {init_meta.model_id}")
    result = train_encoder(train_pool, val_pool, config, encoder=encoder, log=log, on_best=checkpoint,
                   init_state=init_state)
    meta = save_checkpoint(result.model, out_dir / "deepssim-default.pt",
                           training={**summary, **result.config, "best_step": result.best_step,
                                     "steps": result.steps, "seconds": round(result.seconds, 1),
                                     "device": str(device), "command": " ".join(sys.argv)},
                           metrics=result.metrics)
    (out_dir / "history.json").write_text(json.dumps(result.history, indent=1))
    log(f"done: {result.steps} steps in {result.seconds:.0f}s, best step {result.best_step}, "
        f"model {meta.model_id}, metrics {json.dumps(result.metrics)}")


def add_canonical_flips(pool_path: Path, checkpoint: Path, out_dir: Path) -> None:
    """``checkpoint``'s weights with canonical flips on, validated on the held-out subjects
    exactly as ``train`` validates (``make_eval_set`` seed 1234, 1,024 pairs)."""
    from deepssim.metric.checkpoint import load_checkpoint, save_checkpoint
    from deepssim.metric.model import with_canonical_flips
    from deepssim.metric.train import TrainConfig, evaluate, make_eval_set

    source, meta = load_checkpoint(checkpoint)
    model = with_canonical_flips(source)
    _, val_pool, _, _ = split_by_subject(ImageSet.load(pool_path))
    metrics = evaluate(model.eval(), make_eval_set(val_pool, TrainConfig().eval_pairs))
    training = {**meta.training, "weights_from": meta.model_id, "command": " ".join(sys.argv),
                "note": "weights of weights_from unchanged; canonical flips added (EncoderConfig.canonical_flips)"}
    new = save_checkpoint(model, out_dir / "deepssim-default.pt", training=training, metrics=metrics)
    print(f"{new.model_id} (weights of {meta.model_id}, canonical flips on): {json.dumps(metrics)}")


def mix_item(text: str) -> tuple[str, float]:
    """``KIND=WEIGHT`` for ``--mix``; KIND is a :class:`PairMix` field."""
    kind, _, weight = text.partition("=")
    if kind not in PairMix.__dataclass_fields__ or not weight:
        kinds = ", ".join(PairMix.__dataclass_fields__)
        raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT with KIND one of {kinds}")
    return kind, type(getattr(PairMix(), kind))(weight)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("canonical-flips")
    c.add_argument("pool", type=Path)
    c.add_argument("checkpoint", type=Path)
    c.add_argument("out_dir", type=Path)
    b = sub.add_parser("build-pool")
    b.add_argument("out", type=Path)
    t = sub.add_parser("train")
    t.add_argument("pool", type=Path)
    t.add_argument("out_dir", type=Path)
    t.add_argument("--budget", type=float, default=3000.0, help="training seconds")
    t.add_argument("--steps", type=int, default=200_000, help="upper bound on steps")
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--device", default="auto")
    t.add_argument("--phantoms", type=int, default=120)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", type=Path, help="fine-tune from this checkpoint")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--mix", nargs="+", default=[], metavar="KIND=WEIGHT", type=mix_item,
                   help="pair-kind weights overriding deepssim.metric.pairs.PairMix, e.g. neighbour=0.35")
    t.add_argument("--canonical-flips", action="store_true",
                   help="flip images to a canonical orientation before the network (as the shipped model)")
    args = ap.parse_args()
    if args.cmd == "build-pool":
        build_pool(args.out)
    elif args.cmd == "canonical-flips":
        add_canonical_flips(args.pool, args.checkpoint, args.out_dir)
    else:
        train_model(args.pool, args.out_dir, args.budget, args.device, args.steps, args.batch,
                    args.phantoms, args.seed, args.init, args.lr, dict(args.mix), args.canonical_flips)


if __name__ == "__main__":
    main()
