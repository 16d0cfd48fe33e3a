"""Render a realistic sample audit report (for screenshots and template work).

    python scripts/render_sample_report.py [--out /tmp/sample_report.html] [--data ../shared/data]

Evidence images are real slices from ``<data>/slices`` (the nearest "training" image) and a
left-right flipped copy of each (the "candidate"), as a memorised copy would look.  When the
data folder is missing, procedural phantoms stand in.  A quarantined file with an HTML
injection name shows that metadata is escaped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from governance_reports import png_bytes, render_report  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _load_slices(data: Path, n: int) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    files = sorted((data / "slices").rglob("*.png"))
    if not files:
        return _phantoms(n)
    picks = [files[i] for i in np.linspace(0, len(files) - 1, n).astype(int)]
    out = []
    for f in picks:
        arr = np.asarray(Image.open(f).convert("L").resize((128, 128)), dtype=np.float32) / 255.0
        out.append((f.relative_to(data).as_posix(), arr))
    return out


def _phantoms(n: int) -> list[tuple[str, np.ndarray]]:
    yy, xx = np.mgrid[-1:1:128j, -1:1:128j]
    out = []
    for i in range(n):
        img = ((xx / (0.7 + 0.03 * i)) ** 2 + (yy / 0.85) ** 2 < 1).astype(np.float32) * 0.6
        img += 0.4 * (((xx - 0.2 + 0.05 * i) ** 2 + yy ** 2) < 0.05)
        out.append((f"phantom/phantom_{i:02d}.png", np.clip(img, 0, 1)))
    return out


def _evidence(slices, rng) -> list[dict]:
    rows = []
    for i, (train_id, img) in enumerate(slices):
        score = float(np.clip(0.97 - 0.045 * i + rng.normal(0, 0.005), 0, 1))
        rows.append({
            "candidate_id": f"synthetic/batch_{i // 3:02d}/sample_{i:04d}.png",
            "candidate_png": png_bytes(np.fliplr(img)), "nearest_id": train_id,
            "nearest_png": png_bytes(img), "score": score,
            "embedding_score": float(np.clip(score + rng.normal(0, 0.02), 0, 1)),
            "label": "duplicate" if score > 0.85 else "similar",
            "alignment": "flip left-right, rotation 0°, shift (0, 0) px; z-score",
        })
    return rows


def _verdicts(evidence, rng, n: int = 320) -> list[dict]:
    rows = []
    for i in range(n):
        if i < len(evidence):
            e = evidence[i]
            cid, score, near, emb = e["candidate_id"], e["score"], e["nearest_id"], e["embedding_score"]
        else:
            cid = f"synthetic/batch_{i // 40:02d}/sample_{i:04d}.png"
            score = float(np.clip(rng.beta(4, 5), 0, 0.84))
            near = f"slices/brain_mri/colin27/colin27_t1_v0_s{int(rng.integers(181)):03d}.png"
            emb = float(np.clip(score + rng.normal(0, 0.03), -1, 1))
        label = "duplicate" if score > 0.85 else "similar" if score > 0.6 else "different"
        rows.append({"image_id": cid, "source_path": f"/data/candidates/{cid}", "label": label,
                     "score": score, "embedding_score": emb, "nearest_id": near,
                     "nearest_path": f"/data/cohorts/train/{near}", "verified": label == "duplicate"})
    return rows


def build_sample_context(data: Path = DEFAULT_DATA, seed: int = 0) -> dict:
    """A complete, realistic audit context with real slices as evidence."""
    rng = np.random.default_rng(seed)
    evidence = _evidence(_load_slices(data, 8), rng)
    verdicts = _verdicts(evidence, rng)
    counts = {k: sum(r["label"] == k for r in verdicts) for k in ("duplicate", "similar", "different")}
    quarantine = [
        {"source_path": "synthetic/corrupt/sample_9001.dcm", "reason": "unreadable DICOM: missing pixel data"},
        {"source_path": "synthetic/<script>alert(1)</script>.png", "reason": "all-zero image (foreground fraction 0.000)"},
        {"source_path": "synthetic/batch_07/sample_0313.nii.gz", "reason": "4D volume not supported (shape 64x64x30x10)"},
    ]
    counts["quarantined"] = len(quarantine)
    volumes = [
        {"volume_id": "synthetic/volumes/subj_001.nii.gz", "slices": 181, "duplicate_slices": 3,
         "similar_slices": 21, "worst_label": "duplicate", "best_score": 0.962,
         "best_match": "slices/brain_mri/colin27/colin27_t1_v0_s090.png"},
        {"volume_id": "synthetic/volumes/subj_002.nii.gz", "slices": 181, "duplicate_slices": 0,
         "similar_slices": 4, "worst_label": "similar", "best_score": 0.712,
         "best_match": "slices/brain_mri/icbm152_2009_template/icbm152_v0_s101.png"},
        {"volume_id": "synthetic/volumes/subj_003.nii.gz", "slices": 160, "duplicate_slices": 0,
         "similar_slices": 0, "worst_label": "different", "best_score": 0.544,
         "best_match": "slices/brain_mri/dipy_t1_coronal/dipy_t1_v0_s040.png"},
    ]
    validation = {"success": False, "expectations": [
        {"name": "expect_column_values_to_not_be_null(sha256)", "success": True, "unexpected_count": 0},
        {"name": "expect_column_values_to_be_between(nan_fraction, 0, 0.01)", "success": True, "unexpected_count": 0},
        {"name": "expect_column_values_to_be_between(foreground_fraction, 0.02, 1)", "success": False, "unexpected_count": 1},
        {"name": "expect_column_values_to_be_unique(image_id)", "success": True, "unexpected_count": 0},
    ]}
    thresholds = {"similar": 0.6, "duplicate": 0.85, "source": "default (DeepSSIM reference)"}
    policy = {"fail_on_duplicate": True, "max_similar_fraction": None, "fail_on_volume_duplicate": True}
    summary = {
        "verdict": "fail",
        "reason": f"{counts['duplicate']} candidate(s) are duplicates of training images (score > 0.85); "
                  "policy fails on any duplicate.",
        "counts": counts,
        "volume_counts": {"duplicate": 1, "similar": 1, "different": 1},
        "thresholds": thresholds, "policy": policy,
        "model": {"model_id": "deepssim-resnet-s128-20250110", "sha256": "9f2c4e1ab0d7c3e58a61f0b2d4c7e9a13b5d7f9e1c3a5b7d9f1e3c5a7b9d1f3e",
                  "metrics": {"val_mae": 0.041, "val_macro_f1": 0.91, "duplicate_recall": 0.97}},
        "cohort": {"name": "brain-mri-train-v1", "images": 497},
        "settings": {"input_size": 128, "embedding_dim": 256, "batch_size": 64, "top_k": 5,
                     "thresholds": thresholds, "policy": policy,
                     "verification": {"enabled": True, "rotations_deg": [-10, -5, 0, 5, 10], "downsample": 2}},
        "validation": {"success": False},
        "versions": {"deepssim": "0.1.0", "torch": "2.13.0", "monai": "1.6.1", "duckdb": "2.0.1",
                     "great_expectations": "1.24.1", "prefect": "3.9.1", "python": "3.11"},
        "run": {"audit_id": "audit-20250114-093215-5c1e", "started_at": "2025-01-14T09:32:15Z",
                "finished_at": "2025-01-14T09:34:02Z", "candidate_root": "/data/candidates"},
        "complete": True,
    }
    return {"summary": summary, "verdicts": verdicts, "volumes": volumes, "quarantine": quarantine,
            "validation": validation, "evidence": evidence, "best_scores": [r["score"] for r in verdicts]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/sample_report.html"))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    print(render_report(build_sample_context(args.data), args.out))


if __name__ == "__main__":
    main()
