"""Train a memorization-prone diffusion generator for the case study (CPU, ~1 hour).

    python scripts/train_generator.py NAME --seed S --size PX --steps N [--budget SECONDS]

Writes ``deepssim/models/NAME.pt`` (float16 weights) and ``NAME.json`` (config, cohort with
each file's copies and SHA-256, loss history, command), the log to
``deepssim/models/training_logs/NAME-train_log.txt`` and the loss curve next to it.  The
shipped generators were made by the commands in ``deepssim/models/TRAINING.md``.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deepssim.generative.cohort import memorization_cohort, read_cohort_images  # noqa: E402
from deepssim.generative.diffusion import GeneratorConfig, load_generator, save_generator, train_generator  # noqa: E402
from deepssim.generative.grid import to_grid  # noqa: E402

# Subjects the generator trains on; nibabel_anatomical and heudiconv_crlab (never seen by the
# generator nor by the shipped DeepSSIM model) are the case study's non-member control.
SUBJECTS = ["colin27", "icbm152_2009_template", "heudiconv_ke6hL9Lm", "nibabel_example4d"]
DUPLICATE_FROM = ["colin27", "icbm152_2009_template"]
DUPLICATION = {5: 2, 20: 2, 50: 2}  # copies -> how many images get that many copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64, help="the generator's grid (pixels a side)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", type=Path, default=None, help="continue this generator (.pt beside its .json)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "deepssim" / "models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logs = args.out / "training_logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = (logs / f"{args.name}-train_log.txt").open("a" if args.init else "w")

    def log(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, flush=True)
        log_file.write(stamped + "\n")
        log_file.flush()

    cohort = memorization_cohort(args.data, SUBJECTS, DUPLICATION, DUPLICATE_FROM, seed=args.seed)
    distinct = read_cohort_images(args.data, cohort)
    on_grid = {im.file: to_grid(x, args.size) for im, x in zip(cohort.images, distinct)}
    train = np.stack([on_grid[f] for f in cohort.training_files()])
    log(f"command: python {' '.join(sys.argv)}")
    log(f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads; "
        f"{len(cohort.images)} distinct images, {len(train)} in the training list")
    config = GeneratorConfig(size=args.size)
    init = load_generator(args.init) if args.init else None
    if init is not None and init.meta["cohort"] != cohort.to_rows():
        raise SystemExit(f"{args.init} was trained on another cohort (seed or subjects differ)")
    # a continuation draws other batches and noise than the run it continues
    train_seed = args.seed + (int(init.meta["steps_done"]) if init else 0)
    generator, history = train_generator(train, config, args.steps, batch_size=args.batch, seed=train_seed,
                                         time_budget_s=args.budget, log=log, init=init)
    commands = (init.meta.get("commands") or [init.meta["command"]] if init else []) + [f"python {' '.join(sys.argv)}"]
    generator.meta.update(name=args.name, command=" && ".join(commands), commands=commands,
                          torch=torch.__version__, cohort=cohort.to_rows(),
                          history=(init.meta.get("history", []) if init else []) + history,
                          non_member_subjects=["nibabel_anatomical", "heudiconv_crlab"])
    generator_id = save_generator(generator, args.out / f"{args.name}.pt")
    log(f"saved {generator_id} to {args.out / (args.name + '.pt')}")
    _plot_loss(history, logs / f"{args.name}-loss.png", args.name)


def _plot_loss(history: list[dict], path: Path, name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("noise MSE")
    ax.set_yscale("log")
    ax.set_title(f"{name}: DDPM training loss")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
