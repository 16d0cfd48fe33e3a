"""How far down the embedding ranking verification should go: top-5 only vs top-5 plus any
neighbour within ``VerificationConfig.margin`` of the best (up to ``max_k``), on one benchmark,
from the same verifications.

    python benchmarks/neighbour_margin.py SRC OUT [--pydicom-ct] [--seed 0] [--max-per-subject 12]

Builds the benchmark as ``benchmarks/detection_quality.py`` does (same arguments give the same
benchmark), searches ``max_k`` neighbours, verifies each candidate against as many as
``VerificationConfig.neighbours_to_verify`` says, and scores the audit's decision both ways:
with the first ``top_k`` verifications only, and with all of them.  Prints macro F1,
per-class precision / recall, source hit, every candidate whose score changed, and how many
pairs were verified (the cost).  Writes ``OUT/compare.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import detection_quality  # noqa: E402  (gather_source: the same benchmark as detection_quality.py)
from deepssim.evaluation.benchmark import _source_hit, build_benchmark, evaluate, load_benchmark  # noqa: E402
from deepssim.config import Thresholds, VerificationConfig  # noqa: E402
from deepssim.audit.parallel import ordered_map  # noqa: E402
from deepssim.audit.pipeline import _verify_job  # noqa: E402
from deepssim.store.search import topk_cosine  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--pydicom-ct", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=40, help="candidates per kind")
    ap.add_argument("--max-per-subject", type=int, default=12)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        source = detection_quality.gather_source(args.src, None, args.pydicom_ct, Path(tmp) / "src")
        build_benchmark(source, args.out / "bench", seed=args.seed, n_duplicates=args.n, n_similar=args.n,
                        n_different=args.n, max_per_subject=args.max_per_subject)
    data, config = load_benchmark(args.out / "bench"), VerificationConfig()
    train_emb, cand_emb = data.embeddings()
    emb, index = topk_cosine(cand_emb, train_emb, config.max_k)
    emb, index = np.asarray(emb, np.float64), np.asarray(index)
    todo = np.flatnonzero(emb[:, 0] >= config.floor)
    counts = {i: config.neighbours_to_verify(emb[i]) for i in todo}
    jobs = ((data.candidates[i], data.train[index[i, :counts[i]]], config) for i in todo)
    verified = dict(zip(todo, ordered_map(_verify_job, jobs, len(todo), config.workers)))
    labels = np.array([t["label"] for t in data.truth])

    results, scores = {}, {}
    for name, depth in (("top_k", config.top_k), ("margin", config.max_k)):
        score, nearest = emb[:, 0].copy(), index[:, 0].copy()
        for i in todo:
            found = [r.score for r in verified[i][:depth]]
            best = int(np.nanargmax(found))
            score[i], nearest[i] = found[best], index[i, best]
        results[name] = {**evaluate(score, labels, Thresholds()), "source_hit": _source_hit(data, nearest)}
        scores[name] = score
        row = results[name]
        print(f"{name}: macro F1 {row['macro_f1']:.3f}, source hit {row['source_hit']:.2f}, " + ", ".join(
            f"{c} P/R {v['precision']:.2f}/{v['recall']:.2f}" for c, v in row["per_class"].items()))
    for i in np.flatnonzero(np.abs(scores["margin"] - scores["top_k"]) > 1e-9):
        t = data.truth[i]
        print(f"  changed: {t['candidate']} ({t['label']}) {scores['top_k'][i]:.3f} -> {scores['margin'][i]:.3f}")
    pairs = {"top_k": sum(min(config.top_k, n) for n in counts.values()), "margin": sum(counts.values())}
    print(f"verified candidates {len(todo)}, pairs verified: top_k {pairs['top_k']}, margin {pairs['margin']}")
    results["pairs_verified"] = pairs
    (args.out / "compare.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
