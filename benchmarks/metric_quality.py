"""How well a DeepSSIM checkpoint approximates the aligned reference SSIM on subjects it
never trained on, next to pixel baselines on the very same pairs.

    python benchmarks/metric_quality.py [--checkpoint PT] [--pairs 1200] [--seed 2024] [--json OUT]
                                        [--precision float32|bfloat16|auto]

Data: the ``HELD_OUT`` subjects of ``scripts/train_default.py`` (other MR scanners, CT,
radiograph, ultrasound) taken from ``runs/pool.npz`` (rebuilt with ``build-pool`` when
absent), plus three real DICOM files pydicom bundles (``CT_small.dcm``, ``MR_small.dcm``,
``liver_1frame.dcm``, read with :func:`deepssim.api.load_image`), each its own subject.
Caveat: the HELD_OUT subjects never gave a gradient, but they are the validation set the
trainer used to pick the best step; the three pydicom images were never seen at all.

Figures (pairs from :func:`deepssim.metric.train.make_eval_set` with a seed the trainer never
used; the same balanced pair sampler as training, so the target histogram is flat):

* MAE between the score and the aligned reference SSIM, on the unaugmented pairs and when
  both images are independently nuisance-augmented (``nuisance_augment``), overall and
  per SSIM band; Spearman rank correlation;
* copy rate: share of flipped + rotated (±10°) + re-contrasted (gamma 0.5–1.6) copies
  (``copy_transform``) scoring > 0.85 — every held-out image, ``--copy-repeats`` draws;
* error by pair kind (identical, edited, neighbouring slice, same subject, other subject)
  and SSIM band on unbalanced pairs: where the error lives;
* different rate: share of other-subject pairs with aligned SSIM <= 0.60 that score
  <= 0.60 (as :func:`deepssim.metric.train.evaluate` measures them: unaugmented), and the same
  pairs nuisance-augmented.

Baselines on the same pairs: raw SSIM of the (augmented) pair as it is, and Pearson
correlation of the pixels.  Prints a markdown table, then one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOALS = {"mae_aligned": ("<=", 0.05), "mae_augmented": ("<=", 0.07), "spearman_augmented": (">=", 0.90),
         "copy_rate_gt_0.85": (">=", 0.98), "different_rate_le_0.60": (">=", 0.95)}
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm")


def held_out_pool(pool_path: Path):
    """ImagePool of the held-out subjects + pydicom's bundled real DICOM slices."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_default  # noqa: E402  (scripts/train_default.py: HELD_OUT, build_pool)

    from deepssim.api import load_image
    from deepssim.metric.trainingdata import ImageSet, as_pool

    if not pool_path.is_file():
        pool_path.parent.mkdir(parents=True, exist_ok=True)
        train_default.build_pool(pool_path)
    real = ImageSet.load(pool_path)
    held = ImageSet()
    for img, subj, vol, pos in zip(real.images, real.subjects, real.volumes, real.positions):
        if train_default.is_held_out(subj):
            held.add(img, subj, vol, pos)
    try:
        from pydicom.data import get_testdata_file

        for name in PYDICOM_FILES:
            held.add(load_image(get_testdata_file(name)), f"pydicom_{Path(name).stem}")
    except ImportError:
        print("pydicom not installed: its bundled DICOM files are left out", file=sys.stderr)
    return as_pool(held), sorted(set(held.subjects))


def pearson_rows(a, b) -> np.ndarray:
    x = a.reshape(len(a), -1).double()
    y = b.reshape(len(b), -1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-12)).numpy()


def ssim_rows(a, b) -> np.ndarray:
    from deepssim.metric.ssim import ssim_torch

    return np.concatenate([ssim_torch(a[i:i + 256].double(), b[i:i + 256].double()).numpy()
                           for i in range(0, len(a), 256)])


def _bands(target: np.ndarray) -> dict[str, np.ndarray]:
    return {"le_0.60": target <= 0.60, "0.60_0.85": (target > 0.60) & (target <= 0.85), "gt_0.85": target > 0.85}


def band_mae(score: np.ndarray, target: np.ndarray) -> dict:
    return {k: (float(np.abs(score[m] - target[m]).mean()) if m.any() else None) for k, m in _bands(target).items()}


def summarize(score: np.ndarray, target: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    return {"mae": float(np.abs(score - target).mean()), "spearman": float(spearmanr(score, target).statistic),
            "mae_by_band": band_mae(score, target)}


def bootstrap_mae_ci(score: np.ndarray, target: np.ndarray, seed: int, n: int = 1000) -> list[float]:
    rng = np.random.default_rng(seed)
    err = np.abs(score - target)
    means = err[rng.integers(0, len(err), (n, len(err)))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def run(checkpoint: Path, pool_path: Path, n_pairs: int, seed: int, copy_repeats: int, device: str,
        precision: str = "float32") -> dict:
    import torch

    from deepssim.metric.augment import nuisance_augment
    from deepssim.metric.checkpoint import load_checkpoint
    from deepssim.metric.embed import Embedder
    from deepssim.metric.train import copy_transform, evaluate, make_eval_set

    t0 = time.perf_counter()
    pool, subjects = held_out_pool(pool_path)
    model, meta = load_checkpoint(checkpoint, device=device)
    torch.manual_seed(seed)
    ev = make_eval_set(pool, n_pairs=n_pairs, seed=seed)
    official = evaluate(model, ev)

    embedder = Embedder(model, device=device, precision=precision)  # as the audit embeds

    def model_scores(x, y):
        return (embedder.embed(x.squeeze(1).cpu().numpy()) * embedder.embed(y.squeeze(1).cpu().numpy())).sum(1)

    target = ev.target.cpu().numpy().astype(np.float64)
    res: dict = {"model": meta.model_id, "inference": embedder.resolved, "checkpoint": str(checkpoint), "seed": seed,
                 "held_out_subjects": subjects, "held_out_images": len(pool), "pairs": int(len(target)),
                 "target_histogram": np.histogram(target, bins=12, range=(-0.2, 1.0))[0].tolist()}

    aligned = model_scores(ev.a, ev.b)
    augmented = model_scores(ev.aug_a, ev.aug_b)
    res["deepssim"] = {"aligned": summarize(aligned, target), "augmented": summarize(augmented, target)}
    res["deepssim"]["aligned"]["mae_ci95"] = bootstrap_mae_ci(aligned, target, seed)
    res["deepssim"]["augmented"]["mae_ci95"] = bootstrap_mae_ci(augmented, target, seed)
    res["baselines"] = {
        "raw_ssim_augmented": summarize(ssim_rows(ev.aug_a, ev.aug_b), target),
        "pixel_correlation_augmented": summarize(pearson_rows(ev.aug_a, ev.aug_b), target),
        "pixel_correlation_aligned": summarize(pearson_rows(ev.a, ev.b), target),
    }

    # copies: every held-out image, copy_repeats independent flipped/rotated/re-contrasted copies
    gen = torch.Generator().manual_seed(seed + 11)
    originals = pool.images.cpu().repeat(copy_repeats, 1, 1, 1)
    copies = copy_transform()(originals, gen)
    copy_model = model_scores(originals, copies)
    copy_ssim, copy_corr = ssim_rows(originals, copies), pearson_rows(originals, copies)
    is_pydicom = np.array([pool.subject_names[s].startswith("pydicom_") for s in pool.subject.tolist()] * copy_repeats)
    res["copies"] = {
        "n": int(len(copies)),
        "deepssim_rate_gt_0.85": float((copy_model > 0.85).mean()),
        "deepssim_rate_gt_0.85_pydicom_only": float((copy_model[is_pydicom] > 0.85).mean()) if is_pydicom.any() else None,
        "deepssim_score_quantiles_5_25_50": np.quantile(copy_model, [0.05, 0.25, 0.5]).round(4).tolist(),
        "raw_ssim_rate_gt_0.85": float((copy_ssim > 0.85).mean()),
        "pixel_correlation_rate_gt_0.85": float((copy_corr > 0.85).mean()),
        "evaluate_rate_gt_0.85": official["copy_rate_gt_0.85"],
    }
    worst = np.argsort(copy_model)[:5]
    res["copies"]["worst"] = [{"subject": pool.subject_names[int(pool.subject[i % len(pool)])],
                               "score": round(float(copy_model[i]), 4)} for i in worst]

    # different subjects with aligned SSIM <= 0.60: unaugmented (as evaluate) and augmented
    diff_t = ssim_rows(ev.diff_a, ev.diff_b)
    diff_model = model_scores(ev.diff_a, ev.diff_b)
    gen = torch.Generator().manual_seed(seed + 12)
    aug = nuisance_augment()
    da, db = aug(ev.diff_a.cpu(), gen), aug(ev.diff_b.cpu(), gen)
    diff_model_aug = model_scores(da, db)
    res["different"] = {
        "n": int(len(diff_t)), "max_aligned_ssim": float(diff_t.max()),
        "deepssim_rate_le_0.60": float((diff_model <= 0.60).mean()),
        "deepssim_rate_le_0.60_augmented": float((diff_model_aug <= 0.60).mean()),
        "deepssim_rate_gt_0.85_augmented": float((diff_model_aug > 0.85).mean()),
        "raw_ssim_rate_le_0.60_augmented": float((ssim_rows(da, db) <= 0.60).mean()),
        "pixel_correlation_rate_le_0.60": float((pearson_rows(ev.diff_a, ev.diff_b) <= 0.60).mean()),
        "pixel_correlation_rate_le_0.60_augmented": float((pearson_rows(da, db) <= 0.60).mean()),
        "evaluate_rate_le_0.60": official["different_rate_le_0.60"],
    }
    res["by_kind"] = error_by_kind(pool, model_scores, n_pairs * 3, seed + 13)
    res["evaluate"] = official
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def error_by_kind(pool, model_scores, n: int, seed: int) -> list[dict]:
    """Unaugmented error by pair kind and SSIM band, on unbalanced pairs: where the error
    lives (``bias`` = mean of score − target, positive = over-scored)."""
    from deepssim.metric.pairs import PairMix, PairSampler

    a, b, target, kind = PairSampler(pool, PairMix(), seed=seed).draw_raw(n)
    score = model_scores(a, b)
    target, kind = target.cpu().numpy().astype(np.float64), kind.cpu().numpy()
    rows = []
    for band, in_band in _bands(target).items():
        for k, name in enumerate(PairSampler.KINDS):
            m = in_band & (kind == k)
            if m.sum() >= 10:
                err = score[m] - target[m]
                rows.append({"band": band, "kind": name, "n": int(m.sum()), "mae": float(np.abs(err).mean()),
                             "bias": float(err.mean())})
    return rows


def goal_line(name: str, value: float) -> str:
    op, goal = GOALS[name]
    ok = value <= goal if op == "<=" else value >= goal
    return f"{op} {goal:g} | {'met' if ok else '**missed**'}"


def markdown(res: dict) -> str:
    d, b, c, f = res["deepssim"], res["baselines"], res["copies"], res["different"]
    rows = [
        "| figure | DeepSSIM | raw SSIM of the pair | pixel correlation | goal | status |",
        "|---|---|---|---|---|---|",
        f"| MAE to aligned SSIM, unaugmented pairs | {d['aligned']['mae']:.3f} "
        f"(95% CI {d['aligned']['mae_ci95'][0]:.3f}–{d['aligned']['mae_ci95'][1]:.3f}) | 0 (it is the target) | "
        f"{b['pixel_correlation_aligned']['mae']:.3f} | {goal_line('mae_aligned', d['aligned']['mae'])} |",
        f"| MAE to aligned SSIM, both images augmented | {d['augmented']['mae']:.3f} "
        f"(95% CI {d['augmented']['mae_ci95'][0]:.3f}–{d['augmented']['mae_ci95'][1]:.3f}) | "
        f"{b['raw_ssim_augmented']['mae']:.3f} | {b['pixel_correlation_augmented']['mae']:.3f} | "
        f"{goal_line('mae_augmented', d['augmented']['mae'])} |",
        f"| Spearman, unaugmented | {d['aligned']['spearman']:.3f} | 1 | "
        f"{b['pixel_correlation_aligned']['spearman']:.3f} | | |",
        f"| Spearman, augmented | {d['augmented']['spearman']:.3f} | {b['raw_ssim_augmented']['spearman']:.3f} | "
        f"{b['pixel_correlation_augmented']['spearman']:.3f} | {goal_line('spearman_augmented', d['augmented']['spearman'])} |",
    ]
    for band in ("le_0.60", "0.60_0.85", "gt_0.85"):
        label = {"le_0.60": "SSIM ≤ 0.60", "0.60_0.85": "0.60 < SSIM ≤ 0.85", "gt_0.85": "SSIM > 0.85"}[band]
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append(f"| MAE augmented, {label} (unaugmented) | {fmt(d['augmented']['mae_by_band'][band])} "
                    f"({fmt(d['aligned']['mae_by_band'][band])}) | {fmt(b['raw_ssim_augmented']['mae_by_band'][band])} | "
                    f"{fmt(b['pixel_correlation_augmented']['mae_by_band'][band])} | | |")
    rows += [
        f"| copies (flip+rot ±10°+gamma) scoring > 0.85 (n={c['n']}) | {c['deepssim_rate_gt_0.85']:.1%} | "
        f"{c['raw_ssim_rate_gt_0.85']:.1%} | {c['pixel_correlation_rate_gt_0.85']:.1%} | "
        f"{goal_line('copy_rate_gt_0.85', c['deepssim_rate_gt_0.85'])} |",
        f"| different subjects (SSIM ≤ 0.60) scoring ≤ 0.60, unaugmented (n={f['n']}) | "
        f"{f['deepssim_rate_le_0.60']:.1%} | 100% (by construction) | {f['pixel_correlation_rate_le_0.60']:.1%} | "
        f"{goal_line('different_rate_le_0.60', f['deepssim_rate_le_0.60'])} |",
        f"| same, both augmented | {f['deepssim_rate_le_0.60_augmented']:.1%} | "
        f"{f['raw_ssim_rate_le_0.60_augmented']:.1%} | {f['pixel_correlation_rate_le_0.60_augmented']:.1%} | | |",
    ]
    rows += ["", "Unaugmented error by pair kind (unbalanced draw; bias = mean score − target):", "",
             "| SSIM band | pair kind | n | MAE | bias |", "|---|---|---|---|---|"]
    rows += [f"| {r['band']} | {r['kind']} | {r['n']} | {r['mae']:.3f} | {r['bias']:+.3f} |" for r in res["by_kind"]]
    return "\n".join(rows)


def main() -> None:
    from deepssim.metric.checkpoint import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--pool", type=Path, default=ROOT / "runs" / "pool.npz")
    ap.add_argument("--pairs", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--copy-repeats", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="float32", help="float32 | bfloat16 | auto (the audit's default)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args()
    res = run(a.checkpoint, a.pool, a.pairs, a.seed, a.copy_repeats, a.device, a.precision)
    print(f"model {res['model']}, {res['held_out_images']} held-out images of {len(res['held_out_subjects'])} "
          f"subjects, {res['pairs']} pairs, seed {res['seed']}, {res['seconds']} s\n")
    print(markdown(res))
    print()
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
