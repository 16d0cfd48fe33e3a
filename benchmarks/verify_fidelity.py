"""Verification fidelity: does the verified score track the aligned SSIM, per candidate kind,
and what does it cost — the OLD verifier (``deepssim/verify.py`` at a git revision) against
the NEW one (the working tree), in one run, on the same candidates.

    python benchmarks/verify_fidelity.py SRC OUT --seeds 0 1 --n 40 --neighbours 30 \\
        --max-per-subject 15 [--pydicom-ct] [--old-ref c500aaf] [--limit N]

Per seed, builds a benchmark from the ``<subject>/`` folders under SRC into ``OUT/bench_s<seed>``
(:func:`deepssim.evaluation.benchmark.build_benchmark`; reused as it is when its ``truth.csv`` exists;
``--neighbours`` is passed as ``n_neighbours`` only where ``build_benchmark`` accepts it).
Embeds training images and candidates with the shipped model, searches ``SearchConfig.k``
neighbours (:func:`deepssim.store.search.topk_cosine`, as the audit does) and verifies every candidate
whose best embedding score reaches ``VerificationConfig.floor`` against as many neighbours as
``VerificationConfig.neighbours_to_verify`` says (the working tree's settings choose the
neighbours, so both verifiers see the same pairs), with each verifier; the best score over the
neighbours it verified (one it leaves unscored, NaN, is not a match) is fused with the embedding
score (:func:`deepssim.audit.pipeline.fuse_scores`) — the audit's final score
(:func:`deepssim.audit.pipeline.verify_neighbours`).  Each planted candidate (every kind but
``different``) is also verified against its true source (``nearest_train``) alone, which
separates alignment fidelity from retrieval.

OLD is ``deepssim/verify.py`` (the flat layout) at ``--old-ref`` (``git show``), imported as
``deepssim._verify_old`` and run with the ``VerificationConfig`` defaults of ``deepssim/config.py``
at the same revision (the working tree's defaults may be retuned for the new verifier: the
differences are printed).  Both verifiers run in this process with ``torch.set_num_threads(1)``,
after one untimed warm-up each, candidate by candidate: old then new, and the next candidate new
then old (so neither always runs second; load changes on a shared machine hit both alike).

Reports per seed (and pooled over seeds) and per verifier: mean absolute error and mean bias
(score - truth ``ssim``) per kind — ``similar`` also per edit (elastic / blend / patch) — of the
audit-path score and of the true-source score; per-class precision / recall, macro F1
(:func:`deepssim.evaluation.benchmark.evaluate`, default thresholds); how many ``different`` candidates
whose truth SSIM is below 0.5 were called duplicate / similar; seconds per verified candidate
(median, mean) and per verified pair, and old / new ratios; and the wall-clock seconds per verified
candidate at the default settings — every verified candidate through the audit's worker pool, one
process per core (:func:`default_throughput`; ``--no-throughput`` skips it).  Prints markdown and writes
``OUT/verify_fidelity.{md,json,csv}`` (the CSV: one row per candidate).  ``--old-ref none``
runs the new verifier alone; ``--limit N`` keeps the first N candidates of each kind.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import inspect
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import detection_quality  # noqa: E402  (gather_source: the same source folder as detection_quality.py)
from deepssim.audit import verify as new_verify  # noqa: E402
from deepssim.evaluation.benchmark import build_benchmark, evaluate, load_benchmark  # noqa: E402
from deepssim.config import SearchConfig, Thresholds, VerificationConfig  # noqa: E402
from deepssim.audit.gate import label_scores  # noqa: E402
from deepssim.audit.pipeline import fuse_scores  # noqa: E402
from deepssim.store.search import topk_cosine  # noqa: E402

THREADS = 1
LOW_DIFFERENT = 0.5  # "different" candidates with truth SSIM below this should never be called copies
KIND_ORDER = ("duplicate", "similar", "neighbour", "different")


# --------------------------------------------------------------------------- verifiers

OLD_LOCATIONS = ("deepssim/{stem}.py", "deepssim/audit/{stem}.py")  # before and after session 7's layout


def load_old_module(ref: str, stem: str, folder: Path):
    """``deepssim/<stem>.py`` (or ``deepssim/audit/<stem>.py``, where the verifier lives since
    session 7) as of git revision ``ref``, imported as ``deepssim._<stem>_old`` (so its relative
    imports resolve inside the package).  The source is kept in ``folder``."""
    for location in OLD_LOCATIONS:
        shown = subprocess.run(["git", "show", f"{ref}:{location.format(stem=stem)}"], cwd=ROOT,
                               capture_output=True, text=True)
        if shown.returncode == 0:
            text = shown.stdout
            break
    else:
        raise FileNotFoundError(f"{stem}.py is in none of {OLD_LOCATIONS} at {ref}")
    # deepssim.ssim moved to deepssim.metric.ssim (session 7): an old file's `from .ssim`
    # finds it under its old name
    sys.modules.setdefault("deepssim.ssim", importlib.import_module("deepssim.metric.ssim"))
    name = f"_{stem}_old"
    path = folder / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"deepssim.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def single_process(config_class):
    """``config_class()`` with one verification worker where it has the setting."""
    return config_class(**({"workers": 1} if "workers" in {f.name for f in fields(config_class)} else {}))


def old_verifier(ref: str, folder: Path):
    """(verify_candidate, VerificationConfig) as of ``ref``: the old verifier runs with the
    defaults it shipped with (the working tree's may have been retuned for the new one)."""
    verify = load_old_module(ref, "verify", folder)
    return candidate_verifier(verify), single_process(load_old_module(ref, "config", folder).VerificationConfig)


def candidate_verifier(module):
    """``verify_candidate(candidate, references, config)`` of ``module``, or its ``verify_pair``
    per reference where the module has no ``verify_candidate``."""
    if hasattr(module, "verify_candidate"):
        return module.verify_candidate
    return lambda candidate, references, config: [module.verify_pair(candidate, r, config) for r in references]


def config_changes(old, new) -> str:
    """Verification settings that differ between the old and the new defaults, as text."""
    a, b = asdict(old), asdict(new)
    diff = [f"{k} {a.get(k, '–')} → {b.get(k, '–')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "\n\nVerification defaults OLD → NEW: " + ("; ".join(diff) if diff else "identical")


def git_commit(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- benchmarks

def build_or_reuse(source_of, folder: Path, seed: int, args) -> None:
    """Build the benchmark of ``seed`` into ``folder`` unless its truth.csv exists.
    ``source_of()`` gives the source folder (gathered only when something is built)."""
    if (folder / "truth.csv").exists():
        print(f"seed {seed}: reusing {folder}")
        return
    kwargs = dict(seed=seed, n_duplicates=args.n, n_similar=args.n, n_different=args.n,
                  max_per_subject=args.max_per_subject, nuisance_strength=args.strength)
    if "n_neighbours" in inspect.signature(build_benchmark).parameters:
        kwargs["n_neighbours"] = args.neighbours
    elif args.neighbours:
        print("build_benchmark has no n_neighbours: no 'neighbour' candidates")
    summary = build_benchmark(source_of(), folder, **kwargs)
    print(f"seed {seed}: built {folder}: train images {summary['train_images']}, "
          f"candidates {summary['counts']}, labels {summary['labels']}")


def first_of_each_kind(truth: list[dict], limit: int | None) -> np.ndarray:
    """Rows of the first ``limit`` candidates of each kind (all rows when None)."""
    seen: Counter = Counter()
    rows = []
    for i, t in enumerate(truth):
        if limit is None or seen[t["kind"]] < limit:
            rows.append(i)
            seen[t["kind"]] += 1
    return np.array(rows, dtype=int)


def edit_of(t: dict) -> str:
    """The edit a ``similar`` candidate carries (named in parentheses in ``source``)."""
    found = re.search(r"\((\w+)\)\s*$", t["source"]) if t["kind"] == "similar" else None
    return found.group(1) if found else ""


# --------------------------------------------------------------------------- verification

def best_verified(results: list) -> tuple[float, int]:
    """Best score over the neighbours actually verified (a verifier may leave a neighbour
    unscored, NaN: it cannot be the best match), and how many were left unscored."""
    scores = np.array([r.score for r in results], np.float64)
    left = int(np.isnan(scores).sum())
    return (float(np.nanmax(scores)) if left < len(scores) else np.nan), left


def audit_verifies(config: VerificationConfig, emb: np.ndarray, i: int) -> bool:
    """Whether the audit verifies candidate ``i`` (its best embedding score reaches the floor)."""
    return bool(config.enabled and emb[i, 0] >= config.floor)


def audit_references(data, emb: np.ndarray, index: np.ndarray, i: int, cfg) -> np.ndarray:
    """The training images the audit verifies candidate ``i`` against, as many as ``cfg`` says."""
    return data.train[index[i, :cfg.neighbours_to_verify(emb[i])]]


def verify_one(i: int, data, emb: np.ndarray, index: np.ndarray, verifiers: dict, order: list[str],
               config: VerificationConfig) -> dict:
    """One candidate through the audit path (floor and fusion from ``config``; how many
    neighbours each verifier checks from its own configuration, as its audit did) and
    against its true source, with each verifier in ``order`` (``verifiers[name]`` is
    ``(verify_candidate, its VerificationConfig)``).  Returns its record."""
    t = data.truth[i]
    rec = {"candidate": t["candidate"], "kind": t["kind"], "edit": edit_of(t), "ssim": float(t["ssim"]),
           "label": t["label"], "embedding_score": float(emb[i, 0]), "n_verified": 0, "score": {},
           "verification_score": {}, "unscored": {}, "seconds": {}, "true_score": {}, "true_seconds": {},
           "pairs": {}}
    todo = audit_verifies(config, emb, i)
    source = None if t["kind"] == "different" else data.train_files.index(t["nearest_train"])
    for name in order:
        verify, cfg = verifiers[name]
        rec["score"][name], rec["verification_score"][name], rec["seconds"][name] = emb[i, 0], np.nan, np.nan
        rec["unscored"][name], rec["pairs"][name] = 0, 0
        if todo:
            refs = audit_references(data, emb, index, i, cfg)
            rec["pairs"][name] = len(refs)
            results, rec["seconds"][name] = timed(verify, data.candidates[i], refs, cfg)
            best, rec["unscored"][name] = best_verified(results)
            rec["verification_score"][name] = best
            rec["score"][name] = float(fuse_scores(np.float64(emb[i, 0]), np.float64(best), config.fusion))
        rec["true_score"][name], rec["true_seconds"][name] = np.nan, np.nan
        if source is not None:
            results, rec["true_seconds"][name] = timed(verify, data.candidates[i], data.train[source][None], cfg)
            rec["true_score"][name] = results[0].score
    rec["n_verified"] = config.neighbours_to_verify(emb[i]) if todo else 0
    return rec


# the verifiers the throughput jobs call, by name: set before the worker pool forks, so each
# worker inherits them (an old verifier is a module loaded from a file, not importable by name)
_POOL_VERIFIERS: dict = {}


def _pool_job(job) -> int:
    name, candidate, references, config = job
    return len(_POOL_VERIFIERS[name][0](candidate, references, config))


def default_throughput(data, emb: np.ndarray, index: np.ndarray, verifiers: dict, config: VerificationConfig
                       ) -> dict:
    """Wall-clock seconds to verify every candidate the audit verifies (each against its
    neighbours, as :func:`verify_one`), through the audit's worker pool at the default number
    of workers (:func:`deepssim.audit.parallel.ordered_map`, ``VerificationConfig().workers``:
    one process per core) — what a candidate costs an audit on this machine.  Each verifier
    runs twice, in the order A B B A (load drifts on a shared machine).
    Returns {name: {"seconds", "candidates", "workers"}}, seconds summed over both runs,
    candidates counted once per run."""
    from deepssim.audit.parallel import ordered_map, resolve_workers

    _POOL_VERIFIERS.update(verifiers)
    todo = [i for i in range(len(data.truth)) if audit_verifies(config, emb, i)]
    workers = VerificationConfig().workers
    names = list(verifiers)
    out = {name: {"seconds": 0.0, "candidates": 0, "workers": resolve_workers(workers, len(todo))}
           for name in names}
    for name in names + names[::-1]:
        cfg = verifiers[name][1]
        jobs = ((name, data.candidates[i], audit_references(data, emb, index, i, cfg), cfg) for i in todo)
        start = time.perf_counter()
        done = sum(1 for _ in ordered_map(_pool_job, jobs, len(todo), workers))
        out[name]["seconds"] += time.perf_counter() - start
        out[name]["candidates"] += done
    return out


def warm_up(verifiers: dict, data) -> None:
    """One pair per verifier, untimed: first-call costs (lazy imports, allocator) are not the
    verifier's."""
    for fn, cfg in verifiers.values():
        fn(data.candidates[0], data.train[:2], cfg)


def run_seed(folder: Path, seed: int, verifiers: dict, args, config: VerificationConfig
             ) -> tuple[list[dict], dict]:
    """Per-candidate records of one benchmark and its :func:`default_throughput`."""
    data = load_benchmark(folder)
    data.checkpoint = args.checkpoint
    train_emb, cand_emb = data.embeddings()
    emb, index = topk_cosine(cand_emb, train_emb, SearchConfig().k)
    emb, index = np.asarray(emb, np.float64), np.asarray(index)
    warm_up(verifiers, data)
    names, records = list(verifiers), []
    rows = first_of_each_kind(data.truth, args.limit)
    for n, i in enumerate(rows):
        order = names if n % 2 == 0 else names[::-1]
        records.append({"seed": seed, **verify_one(i, data, emb, index, verifiers, order, config)})
        r = records[-1]
        print(f"  seed {seed} [{n + 1}/{len(rows)}] {r['kind']:<9} ssim {r['ssim']:.3f} "
              + " ".join(f"{v} {r['score'][v]:.3f} ({r['seconds'][v]:.2f} s)" for v in names), flush=True)
    throughput = default_throughput(data, emb, index, verifiers, config) if args.throughput else {}
    for name, t in throughput.items():
        print(f"  seed {seed} default settings ({t['workers']} workers): {name} "
              f"{t['seconds'] / max(t['candidates'], 1):.4f} s per verified candidate", flush=True)
    return records, throughput


# --------------------------------------------------------------------------- summaries

def groups(records: list[dict]) -> list[tuple[str, list[dict]]]:
    """(name, records) per kind present, ``similar`` also per edit."""
    out = []
    for kind in [k for k in KIND_ORDER if any(r["kind"] == k for r in records)] + sorted(
            {r["kind"] for r in records} - set(KIND_ORDER)):
        of_kind = [r for r in records if r["kind"] == kind]
        out.append((kind, of_kind))
        if kind == "similar":
            for edit in sorted({r["edit"] for r in of_kind if r["edit"]}):
                out.append((f"similar ({edit})", [r for r in of_kind if r["edit"] == edit]))
    return out


def error_stats(records: list[dict], key: str, verifier: str) -> dict:
    """n, mean absolute error and mean bias of ``record[key][verifier]`` against truth ssim;
    ``nan``: records whose score is NaN (left out of the means)."""
    pairs = [(r[key][verifier], r["ssim"]) for r in records if np.isfinite(r[key][verifier])]
    nan = sum(bool(np.isnan(r[key][verifier])) for r in records) if key == "score" else 0
    if not pairs:
        return {"n": 0, "nan": nan, "mae": None, "bias": None}
    diff = np.array([s - t for s, t in pairs])
    return {"n": len(pairs), "nan": nan, "mae": float(np.abs(diff).mean()), "bias": float(diff.mean())}


def class_stats(records: list[dict], verifier: str, thresholds: Thresholds) -> dict:
    """evaluate() of the audit-path scores, plus how the low-SSIM ``different`` ones were called."""
    scores = np.array([r["score"][verifier] for r in records], np.float64)
    # a NaN score is labelled as the gate labels it (duplicate, fail closed); evaluate()
    # alone would call it different
    row = evaluate(np.nan_to_num(scores, nan=np.inf), np.array([r["label"] for r in records]), thresholds)
    low = [r for r in records if r["kind"] == "different" and r["ssim"] < LOW_DIFFERENT]
    called = label_scores(np.array([r["score"][verifier] for r in low], np.float64), thresholds)
    row["low_different"] = {"n": len(low), "called_duplicate": int(np.sum(called == "duplicate")),
                            "fraction_similar": float(np.mean(called == "similar")) if len(low) else None}
    return row


def cost_stats(records: list[dict], verifier: str) -> dict:
    """Seconds per verified candidate (median, mean) and per verified pair; true-source pairs."""
    done = [r for r in records if r["n_verified"]]
    secs = np.array([r["seconds"][verifier] for r in done])
    true = np.array([r["true_seconds"][verifier] for r in records if np.isfinite(r["true_seconds"][verifier])])
    pairs = sum(r["pairs"][verifier] for r in done)
    return {"verified_candidates": len(done), "verified_pairs": pairs,
            "pairs_left_unscored": sum(r["unscored"][verifier] for r in done),
            "median_s_per_candidate": float(np.median(secs)) if len(secs) else None,
            "mean_s_per_candidate": float(secs.mean()) if len(secs) else None,
            "s_per_pair": float(secs.sum() / pairs) if pairs else None,
            "true_source_median_s_per_pair": float(np.median(true)) if len(true) else None}


def summarise(records: list[dict], verifiers: list[str], thresholds: Thresholds) -> dict:
    out = {"kinds": {name: {v: {"audit": error_stats(rs, "score", v), "true_source": error_stats(rs, "true_score", v)}
                            for v in verifiers} for name, rs in groups(records)},
           "classes": {v: class_stats(records, v, thresholds) for v in verifiers},
           "cost": {v: cost_stats(records, v) for v in verifiers}}
    out["counts"] = {name: len(rs) for name, rs in groups(records)}
    out["n_verified"] = {name: sum(bool(r["n_verified"]) for r in rs) for name, rs in groups(records)}
    if {"old", "new"} <= set(verifiers):
        old, new = out["cost"]["old"], out["cost"]["new"]
        out["old_over_new"] = {k: (old[k] / new[k] if old[k] and new[k] else None)
                               for k in ("median_s_per_candidate", "mean_s_per_candidate", "s_per_pair")}
    return out


# --------------------------------------------------------------------------- markdown

def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _err(e: dict) -> str:
    nan = f" ({e['nan']} NaN)" if e["nan"] else ""
    return ("–" if not e["n"] else f"{e['mae']:.3f} / {e['bias']:+.3f}") + nan


def fidelity_table(summaries: dict, verifiers: list[str]) -> str:
    cols = [f"{v} audit MAE / bias" for v in verifiers] + [f"{v} true-source MAE / bias" for v in verifiers]
    lines = ["| seed | kind | n | verified | " + " | ".join(cols) + " |", "|---" * (4 + len(cols)) + "|"]
    for seed, s in summaries.items():
        for name, per_v in s["kinds"].items():
            cells = [_err(per_v[v]["audit"]) for v in verifiers] + [_err(per_v[v]["true_source"]) for v in verifiers]
            lines.append(f"| {seed} | {name} | {s['counts'][name]} | {s['n_verified'][name]} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def class_table(summaries: dict, verifiers: list[str]) -> str:
    lines = ["| seed | verifier | macro F1 | dup P / R | similar P / R | different P / R "
             f"| different, SSIM < {LOW_DIFFERENT}: n | called duplicate | fraction similar |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, s in summaries.items():
        for v in verifiers:
            c = s["classes"][v]
            pr = lambda k: f"{c['per_class'][k]['precision']:.2f} / {c['per_class'][k]['recall']:.2f}"  # noqa: E731
            low = c["low_different"]
            lines.append(f"| {seed} | {v} | {c['macro_f1']:.3f} | {pr('duplicate')} | {pr('similar')} | "
                         f"{pr('different')} | {low['n']} | {low['called_duplicate']} | "
                         f"{_f(low['fraction_similar'], 2)} |")
    return "\n".join(lines) + "\n"


def cost_table(summaries: dict, verifiers: list[str]) -> str:
    lines = ["| seed | verifier | verified candidates | pairs (left unscored) | s / candidate median | mean "
             "| s / pair | true source s / pair (median) | old / new (median, mean, per pair) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, s in summaries.items():
        ratio = s.get("old_over_new")
        ratio_s = ", ".join(_f(ratio[k], 2) for k in ratio) if ratio else "–"
        for v in verifiers:
            c = s["cost"][v]
            lines.append(f"| {seed} | {v} | {c['verified_candidates']} | {c['verified_pairs']} "
                         f"({c['pairs_left_unscored']}) | "
                         f"{_f(c['median_s_per_candidate'])} | {_f(c['mean_s_per_candidate'])} | "
                         f"{_f(c['s_per_pair'])} | {_f(c['true_source_median_s_per_pair'])} | "
                         f"{ratio_s if v == verifiers[0] else ''} |")
    return "\n".join(lines) + "\n"


def pooled_throughput(parts: list[dict]) -> dict:
    """:func:`default_throughput` results of several seeds added up, with s per candidate."""
    out: dict = {}
    for part in parts:
        for name, t in part.items():
            acc = out.setdefault(name, {"seconds": 0.0, "candidates": 0, "workers": t["workers"]})
            acc["seconds"] += t["seconds"]
            acc["candidates"] += t["candidates"]
            acc["workers"] = max(acc["workers"], t["workers"])
    for t in out.values():
        t["s_per_candidate"] = t["seconds"] / t["candidates"] if t["candidates"] else None
    return out


def throughput_table(summaries: dict, verifiers: list[str]) -> str:
    lines = ["| seed | verifier | worker processes | verified candidates (× 2 runs) | wall s / candidate "
             "| old / new |", "|---|---|---|---|---|---|"]
    for seed, s in summaries.items():
        t = s.get("throughput") or {}
        if not t:
            continue
        ratio = (t["old"]["s_per_candidate"] / t["new"]["s_per_candidate"]
                 if "old" in t and t["new"]["s_per_candidate"] else None)
        for v in verifiers:
            lines.append(f"| {seed} | {v} | {t[v]['workers']} | {t[v]['candidates'] // 2} | "
                         f"{_f(t[v]['s_per_candidate'])} | {_f(ratio, 2) if v == verifiers[0] and ratio else ''} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def markdown(summaries: dict, verifiers: list[str], header: str) -> str:
    text = (f"{header}\n\n### Score vs aligned SSIM (score - truth)\n\n{fidelity_table(summaries, verifiers)}"
            f"\n### Labels at the default thresholds (audit path)\n\n{class_table(summaries, verifiers)}"
            f"\n### Cost (wall clock, torch threads = {THREADS}, one process)\n\n{cost_table(summaries, verifiers)}")
    pool = throughput_table(summaries, verifiers)
    if pool:
        text += ("\n### Cost at the default settings (the audit's worker pool, one process per core, "
                 f"torch threads = 1 each)\n\n{pool}")
    return text


# --------------------------------------------------------------------------- outputs

CSV_FIELDS = ["seed", "candidate", "kind", "edit", "ssim", "label", "embedding_score", "n_verified"]


def write_csv(path: Path, records: list[dict], verifiers: list[str]) -> None:
    columns = (("score", "score"), ("true_source_score", "true_score"), ("unscored_neighbours", "unscored"),
               ("seconds", "seconds"), ("true_source_seconds", "true_seconds"))
    per_v = [(f"{v}_{col}", key) for col, key in columns for v in verifiers]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS + [name for name, _ in per_v])
        for r in records:
            writer.writerow([r[k] for k in CSV_FIELDS]
                            + [_csv_num(r[key][name.split("_", 1)[0]]) for name, key in per_v])


def _csv_num(x) -> str:
    return "" if x is None or not np.isfinite(x) else f"{float(x):.6g}"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="folder of <subject>/ sub-folders of PNG/NPY slices")
    ap.add_argument("out", type=Path, help="output folder (benchmarks bench_s<seed>/ and the results)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n", type=int, default=40, help="candidates per kind")
    ap.add_argument("--neighbours", type=int, default=30, help="'neighbour' candidates (if build_benchmark has them)")
    ap.add_argument("--max-per-subject", type=int, default=15)
    ap.add_argument("--strength", type=float, default=1.0, help="nuisance strength")
    ap.add_argument("--pydicom-ct", action="store_true", help="add pydicom's CT test images")
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--old-ref", default="c500aaf", help="git revision of the OLD verify.py; 'none' skips it")
    ap.add_argument("--limit", type=int, default=None, help="verify only the first N candidates of each kind")
    ap.add_argument("--no-throughput", dest="throughput", action="store_false",
                    help="skip the run through the audit's worker pool at the default settings")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    args.out.mkdir(parents=True, exist_ok=True)
    config, thresholds = single_process(VerificationConfig), Thresholds()
    verifiers = {"new": (candidate_verifier(new_verify), config)}
    header = "## Verification fidelity: NEW = working tree"
    if args.old_ref.lower() != "none":
        verifiers = {"old": old_verifier(args.old_ref, args.out), **verifiers}
        header += f", OLD = {args.old_ref} ({git_commit(args.old_ref)[:12]}, verify.py with its config.py defaults)"
        header += config_changes(verifiers["old"][1], config)
    names = list(verifiers)

    records: list[dict] = []
    throughputs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        source_of = lambda: detection_quality.gather_source(args.src, None, args.pydicom_ct, Path(tmp) / "src")  # noqa: E731
        for seed in args.seeds:
            folder = args.out / f"bench_s{seed}"
            build_or_reuse(source_of, folder, seed, args)
            seed_records, throughputs[seed] = run_seed(folder, seed, verifiers, args, config)
            records += seed_records

    summaries = {seed: summarise([r for r in records if r["seed"] == seed], names, thresholds) for seed in args.seeds}
    for seed in args.seeds:
        summaries[seed]["throughput"] = pooled_throughput([throughputs[seed]])
    if len(args.seeds) > 1:
        summaries["all"] = summarise(records, names, thresholds)
        summaries["all"]["throughput"] = pooled_throughput(list(throughputs.values()))
    text = markdown(summaries, names, header)
    print("\n" + text)
    (args.out / "verify_fidelity.md").write_text(text)
    write_csv(args.out / "verify_fidelity.csv", records, names)
    result = {"threads": THREADS, "old_ref": args.old_ref,
              "verification": {name: asdict(cfg) for name, (_, cfg) in verifiers.items()},
              "search_k": SearchConfig().k, "thresholds": asdict(thresholds), "limit": args.limit,
              "summaries": {str(k): v for k, v in summaries.items()}}
    (args.out / "verify_fidelity.json").write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
