"""Marginal cost per candidate of the full default audit (verification included) against a
10,000-image cohort of crowded look-alikes, vs an exhaustive reference SSIM against the whole
cohort; OLD code (a git revision) vs NEW code (the working tree) in one run.

    .venv/bin/python benchmarks/crowded_audit.py --work /tmp/crowd --out /tmp/crowd/results \\
        [--cohort-size 10000] [--candidates 300] [--old-ref c500aaf] [--old-candidates 40 80] \\
        [--ssim-pairs 300] [--repeats 1] [--seed 0]

What it does:

1. **Cohort** (cached in ``--work/cohort``, reused when its recipe matches): 8-bit PNG slices of
   the two real NIfTI volumes of ``../shared/data/volumes`` (Colin27 T1, MNI152 2009) along all
   three axes, then of obliquely resliced copies of them (small 3D rotations, ``scipy.ndimage.
   affine_transform`` order 1) until ``--cohort-size`` images: thousands of look-alikes that
   crowd every candidate's ranking.  Nearly empty slices (< 5 % of pixels above 10 % of the
   volume's window) are skipped.  One folder per volume/rotation/axis.
2. **Candidates** (``--candidates``), interleaved so any prefix holds the same mix:
   ``copy`` — a cohort slice's 128 px model input under :func:`deepssim.metric.augment.nuisance_augment`,
   quantised to 8 bit;
   ``neighbour`` — a slice of the same volumes at a rotation that is NOT in the cohort;
   ``different`` — a slice of another subject (``../shared/data/slices/brain_mri`` other than
   colin27/icbm152, ``deepssim_extra_data`` other than the two folders of unknown, possibly
   Colin27-derived origin).  Seeded, deterministic.  ``truth.csv`` lists them.
3. **Register** the cohort once per code version into a fresh DuckDB (timed; not the marginal cost).
4. **Audit** through the real CLI with the default settings, twice per code version with two
   candidate counts (prefixes of the same interleaved list): marginal cost per candidate =
   (t_big - t_small) / (n_big - n_small), which removes the fixed start-up (Prefect, imports,
   model load, cohort load).  Wall time and peak memory of the audit process tree: the largest
   process's ``ru_maxrss`` (``os.wait4``) and the peak of the tree's summed PSS (psutil, sampled
   every 0.2 s; PSS divides the pages forked workers share, so the sum does not double count).  NEW is also run with
   ``--no-verify`` (the embedding-only floor).
5. **OLD vs NEW**: NEW is this working tree; OLD is ``--old-ref`` checked out with
   ``git worktree add --detach --work/old``, run with the same venv and
   ``PYTHONPATH=<worktree>`` (the editable install's finder comes after ``PYTHONPATH`` on
   ``sys.meta_path``; a probe prints which ``deepssim`` each version imports).  OLD's audit
   is slow, so it runs with ``--old-candidates`` (default 40 and 80).
6. **Exhaustive reference SSIM**: :func:`deepssim.metric.ssim.reference_ssim` (z-score, scikit-image
   defaults) timed on ``--ssim-pairs`` real candidate x cohort pairs of 128 px model inputs,
   in chunks interleaved with the audits (the machine is noisy), one process, extrapolated to
   the cohort size per candidate.

Prints a markdown table and a sanity line per version (labels by planted kind, from
verdicts.csv); writes ``results.json`` (and the table) into ``--out``.  Audit exit codes 0 and
1 are both fine (planted copies should fail the gate); anything else aborts.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
VOLUMES = {"colin27": SHARED / "volumes" / "colin27_t1.nii.gz",
           "mni152": SHARED / "volumes" / "mni152_2009_t1.nii.gz"}
OTHER_ROOTS = [SHARED / "slices" / "brain_mri", REPO / "deepssim_extra_data"]
# same people as the volumes, or of unknown origin that may be Colin27-derived (their READMEs)
EXCLUDED_SUBJECTS = {"colin27", "icbm152_2009_template", "elastix_example_mr", "itk_brain_midsagittal"}
AXES = ("sag", "cor", "ax")
# cohort reslicings, degrees about (x, y, z); the identity first, then single-axis tilts, then pairs
COHORT_ROTATIONS = [(0, 0, 0)] + [r for a in (6, -6, 12, -12) for r in ((a, 0, 0), (0, a, 0), (0, 0, a))] \
    + [(a, b, 0) for a in (9, -9) for b in (9, -9)] + [(0, a, b) for a in (9, -9) for b in (9, -9)]
# orientations that are NOT in the cohort: the neighbours' reslicings
NEIGHBOUR_ROTATIONS = [(3, 0, 0), (0, -3, 0), (0, 0, 4), (4, -2, 0), (-3, 0, 3), (0, 8, -2), (-8, 3, 0)]
FOREGROUND_LEVEL, FOREGROUND_MIN = 0.10, 0.05
COHORT_RECIPE = 2  # bump when the cohort recipe changes (invalidates the cache)


# ----------------------------------------------------------------------------- data

def load_volume(path: Path) -> np.ndarray:
    """Canonical (RAS) float32 volume windowed to [0, 1] at its 0.5-99.5 percentiles."""
    import nibabel as nib

    vol = np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj, dtype=np.float32)
    lo, hi = np.percentile(vol, [0.5, 99.5])
    return np.clip((vol - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def rotate(vol: np.ndarray, degrees: tuple[float, float, float]) -> np.ndarray:
    """``vol`` rotated about its centre by ``degrees`` about x, y, z (linear interpolation)."""
    from scipy.ndimage import affine_transform
    from scipy.spatial.transform import Rotation

    if not any(degrees):
        return vol
    mat = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    centre = (np.array(vol.shape) - 1) / 2.0
    return affine_transform(vol, mat, offset=centre - mat @ centre, order=1).astype(np.float32)


def slices_of(vol: np.ndarray):
    """(axis name, index, 2D uint8 slice) of every slice that is not nearly empty."""
    for axis, name in enumerate(AXES):
        for i in range(vol.shape[axis]):
            sl = np.take(vol, i, axis=axis)
            if np.mean(sl > FOREGROUND_LEVEL) < FOREGROUND_MIN:
                continue
            yield name, i, np.round(np.rot90(sl) * 255).astype(np.uint8)


def rot_name(r) -> str:
    return "r" + "_".join(f"{int(a):+d}" for a in r)


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, optimize=False, compress_level=1)


def build_cohort(work: Path, size: int) -> Path:
    """``work/cohort/<volume>_<rotation>_<axis>/<index>.png``, ``size`` images; cached."""
    root = work / "cohort"
    stamp = root / "cohort.json"
    recipe = {"recipe": COHORT_RECIPE, "size": size}
    if stamp.exists() and json.loads(stamp.read_text()).get("recipe") == recipe:
        return root
    if root.exists():
        shutil.rmtree(root)
    t0, n = time.perf_counter(), 0
    vols = {name: load_volume(p) for name, p in VOLUMES.items()}
    per_folder = Counter()
    for rot in COHORT_ROTATIONS:
        for vname, vol in vols.items():
            for axis, i, image in slices_of(rotate(vol, rot)):
                if n >= size:
                    break
                folder = f"{vname}_{rot_name(rot)}_{axis}"
                save_png(root / folder / f"{i:03d}.png", image)
                per_folder[folder] += 1
                n += 1
        if n >= size:
            break
    if n < size:
        raise SystemExit(f"only {n} cohort slices from {len(COHORT_ROTATIONS)} rotations; add rotations")
    stamp.write_text(json.dumps({"recipe": recipe, "images": n, "folders": len(per_folder),
                                 "rotations_used": sorted({f.split("_", 1)[1].rsplit("_", 1)[0] for f in per_folder}),
                                 "build_s": round(time.perf_counter() - t0, 1)}, indent=1))
    return root


def _nuisance_copy(path: Path, seed: int, strength: float) -> np.ndarray:
    """The slice at ``path`` as the gate sees it (its square model input) under the
    nuisances, as 8-bit: applied to the native, non-square slice, a rotation in normalised
    coordinates would shear it — no nuisance the gate models, nor one a generator makes."""
    import torch

    from deepssim.api import load_image
    from deepssim.metric.augment import nuisance_augment

    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(load_image(path))[None, None]
    out = nuisance_augment(strength)(x, gen)[0, 0].numpy()
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def build_candidates(work: Path, cohort: Path, n: int, seed: int, strength: float) -> tuple[Path, list[dict]]:
    """``work/candidates/all/<i>_<kind>.png`` (kinds interleaved copy, neighbour, different)
    and ``truth.csv``; cached per (n, seed, strength, cohort)."""
    from PIL import Image

    root = work / "candidates"
    stamp = root / "candidates.json"
    recipe = {"n": n, "seed": seed, "strength": strength, "copies": "model-input-v2",
              "cohort": json.loads((cohort / "cohort.json").read_text())}
    if stamp.exists() and json.loads(stamp.read_text()) == recipe:
        with open(root / "truth.csv") as f:
            return root / "all", list(csv.DictReader(f))
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    kinds = [("copy", "neighbour", "different")[i % 3] for i in range(n)]
    need = Counter(kinds)
    cohort_files = sorted(cohort.glob("*/*.png"))
    copies = [cohort_files[j] for j in rng.choice(len(cohort_files), need["copy"], replace=False)]
    others = sorted(p for r in OTHER_ROOTS for d in r.iterdir()
                    if d.is_dir() and d.name not in EXCLUDED_SUBJECTS for p in d.glob("*.png"))
    if len(others) < need["different"]:
        raise SystemExit(f"only {len(others)} other-subject slices for {need['different']} 'different' candidates")
    different = [others[j] for j in rng.choice(len(others), need["different"], replace=False)]
    vols = {name: load_volume(p) for name, p in VOLUMES.items()}
    neighbours = []  # (volume, rotation, axis, index, image)
    per_rot = math.ceil(need["neighbour"] / len(NEIGHBOUR_ROTATIONS))
    for rot in NEIGHBOUR_ROTATIONS:
        for vname in vols:
            pool = list(slices_of(rotate(vols[vname], rot)))
            for j in rng.choice(len(pool), min(len(pool), math.ceil(per_rot / 2)), replace=False):
                axis, i, image = pool[j]
                neighbours.append((vname, rot, axis, i, image))
    order = rng.permutation(len(neighbours))[:need["neighbour"]]
    neighbours = [neighbours[j] for j in order]
    out, rows, took = root / "all", [], Counter()
    for i, kind in enumerate(kinds):
        j = took[kind]
        took[kind] += 1
        name = f"{i:04d}_{kind}.png"
        if kind == "copy":
            src = copies[j]
            image = _nuisance_copy(src, seed * 100_003 + i, strength)
            source = src.relative_to(cohort).as_posix()
        elif kind == "neighbour":
            vname, rot, axis, idx, image = neighbours[j]
            source = f"{vname} {rot_name(rot)} {axis} {idx}"
        else:
            src = different[j]
            image = np.asarray(Image.open(src).convert("L"))
            source = f"{src.parent.name}/{src.name}"
        save_png(out / name, image)
        rows.append({"file": name, "kind": kind, "source": source})
    with open(root / "truth.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "kind", "source"])
        w.writeheader()
        w.writerows(rows)
    stamp.write_text(json.dumps(recipe))
    return out, rows


def candidate_subset(all_dir: Path, n: int) -> Path:
    """A folder holding hard links to the first ``n`` candidates (same mix as the whole)."""
    files = sorted(all_dir.glob("*.png"))
    if n > len(files):
        raise SystemExit(f"asked for {n} candidates, only {len(files)} built")
    sub = all_dir.parent / f"first{n:04d}"
    if sub.exists() and len(list(sub.glob("*.png"))) == n:
        return sub
    shutil.rmtree(sub, ignore_errors=True)
    sub.mkdir()
    for p in files[:n]:
        os.link(p, sub / p.name)
    return sub


# ----------------------------------------------------------------------------- processes

class Version:
    """A code version: the repository root it imports from and its own store/Prefect home."""

    def __init__(self, name: str, root: Path, work: Path):
        self.name, self.root = name, root
        self.home = work / f"home-{name}"
        self.db = self.home / "crowd.duckdb"
        self.prefect_home = Path(tempfile.mkdtemp(prefix=f"prefect-{name}-", dir=work))

    def env(self) -> dict:
        env = dict(os.environ)
        env.pop("DEEPSSIM_PROGRESS", None)
        env.update({"PYTHONPATH": str(self.root), "DEEPSSIM_HOME": str(self.home),
                    "PREFECT_HOME": str(self.prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false",
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
                    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(self.prefect_home / "results")})
        return env

    def cli(self, *args: str) -> list[str]:
        # the console script is `flows.cli:app`; `python -c` with cwd = the work folder, so
        # sys.path[0] holds no package and PYTHONPATH decides which tree is imported
        return [sys.executable, "-c", "import sys; sys.argv[0] = 'deepssim'; from flows.cli import app; app()",
                *args]

    def probe(self, cwd: Path) -> dict:
        code = ("import json, deepssim, flows.cli, flows.audit; "
                "print(json.dumps({'deepssim': deepssim.__file__, 'flows.cli': flows.cli.__file__}))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env(), cwd=cwd, capture_output=True,
                             text=True, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        for path in got.values():
            if not Path(path).resolve().is_relative_to(self.root.resolve()):
                raise SystemExit(f"{self.name} imports {path}, not from {self.root}")
        return got


def run_measured(cmd: list[str], env: dict, cwd: Path, log: Path, ok=(0,)) -> dict:
    """Run ``cmd``; wall seconds, exit code, the largest process's peak RSS (wait4) and the
    peak of the process tree's summed PSS (sampled; PSS splits pages that forked workers
    share, so the sum is the tree's real footprint)."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        peak = {"tree": 0}
        done = threading.Event()

        def sample():
            try:
                top = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not done.is_set():
                total = 0
                try:
                    procs = [top] + top.children(recursive=True)
                except psutil.Error:
                    break
                for p in procs:
                    try:
                        total += p.memory_full_info().pss
                    except psutil.Error:
                        pass
                peak["tree"] = max(peak["tree"], total)
                done.wait(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        th.join()
    if proc.returncode not in ok:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return {"wall_s": wall, "exit_code": proc.returncode, "peak_rss_mb": usage.ru_maxrss / 1024,
            "peak_tree_pss_mb": peak["tree"] / 2**20}


def make_worktree(ref: str, path: Path) -> str:
    if path.exists() or path.name in subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True,
                                                    text=True).stdout:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=REPO, check=True,
                   capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                          check=True).stdout.strip()


def working_tree_id() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")


# ----------------------------------------------------------------------------- SSIM

class SsimClock:
    """Exhaustive-reference SSIM timed on real candidate x cohort pairs, chunk by chunk."""

    def __init__(self, cand_dir: Path, cohort: Path, pairs: int, seed: int):
        from PIL import Image

        from deepssim.preprocess import to_model_input

        rng = np.random.default_rng(seed + 1)
        cands = sorted(cand_dir.glob("*.png"))
        cohort_files = sorted(cohort.glob("*/*.png"))
        load = lambda p: to_model_input(np.asarray(Image.open(p).convert("L"))).astype(np.float64)  # noqa: E731
        self.a = [load(cands[i % len(cands)]) for i in range(pairs)]
        self.b = [load(cohort_files[j]) for j in rng.choice(len(cohort_files), pairs, replace=False)]
        self.next, self.seconds, self.values = 0, 0.0, []

    def chunk(self, n: int) -> None:
        from deepssim.metric.ssim import reference_ssim

        stop = min(len(self.a), self.next + n)
        t0 = time.perf_counter()
        for i in range(self.next, stop):
            self.values.append(reference_ssim(self.a[i], self.b[i]))
        self.seconds += time.perf_counter() - t0
        self.next = stop

    @property
    def per_pair(self) -> float:
        return self.seconds / max(self.next, 1)


# ----------------------------------------------------------------------------- verdicts

def verdict_summary(out_dir: Path, truth: list[dict]) -> dict:
    """Labels by planted kind; for copies, how often the nearest image is the planted source."""
    kind_of = {r["file"]: r for r in truth}
    labels: dict[str, Counter] = defaultdict(Counter)
    source_found = 0
    with open(out_dir / "verdicts.csv") as f:
        for row in csv.DictReader(f):
            t = kind_of.get(Path(row["image_id"]).name)
            if t is None:
                continue
            labels[t["kind"]][row["label"]] += 1
            if t["kind"] == "copy" and row.get("nearest_path", "").replace("\\", "/").endswith(t["source"]):
                source_found += 1
    summary = json.loads((out_dir / "summary.json").read_text())
    return {"verdict": summary.get("verdict"), "labels": {k: dict(v) for k, v in sorted(labels.items())},
            "copies_matched_to_their_source": source_found}


def sanity_line(name: str, s: dict) -> str:
    parts = []
    for kind in ("copy", "neighbour", "different"):
        c = s["labels"].get(kind, {})
        n = sum(c.values())
        parts.append(f"{kind} (n={n}): " + ", ".join(f"{c.get(l, 0)} {l}" for l in ("duplicate", "similar", "different")))
    return (f"- {name}: gate {s['verdict']}; " + "; ".join(parts)
            + f"; copies whose nearest image is their planted source: {s['copies_matched_to_their_source']}")


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work folder (cohort cache, stores, logs, worktree)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: WORK/results)")
    ap.add_argument("--cohort-size", type=int, default=10_000)
    ap.add_argument("--candidates", type=int, default=300, help="NEW's big run; its small run is a third")
    ap.add_argument("--old-ref", default="c500aaf", help="git revision of the OLD code ('' to skip OLD)")
    ap.add_argument("--old-candidates", type=int, nargs=2, default=[40, 80], metavar=("SMALL", "BIG"))
    ap.add_argument("--ssim-pairs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=1, help="times each NEW audit pair is run (minimum is kept)")
    ap.add_argument("--copy-strength", type=float, default=1.0, help="nuisance_augment strength of the copies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-worktree", action="store_true", help="leave the OLD worktree in place")
    a = ap.parse_args()
    work = a.work.resolve()
    out = (a.out or work / "results").resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    t_start = time.perf_counter()

    def note(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    cohort = build_cohort(work, a.cohort_size)
    note(f"cohort: {json.loads((cohort / 'cohort.json').read_text())}")
    cand_all, truth = build_candidates(work, cohort, a.candidates, a.seed, a.copy_strength)
    note(f"candidates: {len(truth)} {dict(Counter(r['kind'] for r in truth))}")
    n_small, n_big = max(1, a.candidates // 3), a.candidates
    ssim = SsimClock(cand_all, cohort, a.ssim_pairs, a.seed)

    versions = [Version("new", REPO, work)]
    old_commit = None
    if a.old_ref:
        old_commit = make_worktree(a.old_ref, work / "old")
        versions.append(Version("old", work / "old", work))
    provenance = {"new": working_tree_id(), "old": old_commit}
    imports = {}
    for v in versions:
        shutil.rmtree(v.home, ignore_errors=True)
        v.home.mkdir(parents=True)
        imports[v.name] = v.probe(work)
        note(f"{v.name} imports {imports[v.name]}")

    # the list of timed steps, SSIM chunks interleaved between them
    plan = []
    for v in versions:
        plan.append(("register", v, None, None))
    for r in range(a.repeats):
        pair = [n_small, n_big] if r % 2 == 0 else [n_big, n_small]
        plan += [("audit", versions[0], n, True) for n in pair]
        plan += [("audit", versions[0], n, False) for n in pair]
    if a.old_ref:
        plan += [("audit", versions[1], n, True) for n in a.old_candidates]
    chunk = math.ceil(a.ssim_pairs / len(plan))

    runs, register = [], {}
    for step, (what, v, n, verify) in enumerate(plan):
        if what == "register":
            note(f"{v.name}: cohort register ({a.cohort_size} images)")
            res = run_measured(v.cli("cohort", "register", "crowd", str(cohort), "--db", str(v.db)), v.env(), work,
                               logs / f"{v.name}-register.log")
            register[v.name] = res
            note(f"{v.name}: registered in {res['wall_s']:.1f} s")
        else:
            mode = "default" if verify else "no-verify"
            sub = candidate_subset(cand_all, n)
            odir = work / "audits" / f"{v.name}-{mode}-{n}-{step}"
            shutil.rmtree(odir, ignore_errors=True)
            args = ["audit", str(sub), "--cohort", "crowd", "--out", str(odir), "--db", str(v.db)]
            if not verify:
                args.append("--no-verify")
            note(f"{v.name} {mode}: audit {n} candidates")
            res = run_measured(v.cli(*args), v.env(), work, logs / f"{v.name}-{mode}-{n}-{step}.log", ok=(0, 1))
            res.update({"version": v.name, "mode": mode, "candidates": n, "out_dir": str(odir),
                        "verdicts": verdict_summary(odir, truth)})
            runs.append(res)
            note(f"{v.name} {mode} {n}: {res['wall_s']:.1f} s, exit {res['exit_code']}, "
                 f"peak {res['peak_rss_mb']:.0f} MB (tree PSS {res['peak_tree_pss_mb']:.0f} MB)")
        ssim.chunk(chunk)
    ssim.chunk(a.ssim_pairs)  # whatever is left
    exhaustive = ssim.per_pair * a.cohort_size
    note(f"reference SSIM: {ssim.per_pair * 1e3:.3f} ms/pair over {ssim.next} pairs -> "
         f"{exhaustive:.2f} s per candidate against {a.cohort_size}")

    rows = []
    for v in versions:
        for mode in ("default", "no-verify"):
            mine = [r for r in runs if r["version"] == v.name and r["mode"] == mode]
            if not mine:
                continue
            by_n = defaultdict(list)
            for r in mine:
                by_n[r["candidates"]].append(r)
            ns = sorted(by_n)
            best = {n: min(by_n[n], key=lambda r: r["wall_s"]) for n in ns}
            lo, hi = best[ns[0]], best[ns[-1]]
            marginal = (hi["wall_s"] - lo["wall_s"]) / (ns[-1] - ns[0])
            rows.append({"version": v.name, "mode": mode, "candidates": ns,
                         "wall_s": [round(best[n]["wall_s"], 1) for n in ns],
                         "all_wall_s": {n: [round(r["wall_s"], 1) for r in by_n[n]] for n in ns},
                         "marginal_s_per_candidate": marginal,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                         "peak_tree_pss_mb": max(r["peak_tree_pss_mb"] for r in mine),
                         "ratio_exhaustive_over_marginal": exhaustive / marginal if marginal > 0 else None,
                         "verdicts_big": hi["verdicts"]})

    label = {"new": f"NEW ({provenance['new']})", "old": f"OLD ({(old_commit or '')[:7]})"}
    lines = ["| version | mode | candidates (small / big) | wall s (small / big) | marginal s/candidate "
             "| peak MB: largest process RSS (tree PSS) | exhaustive SSIM / marginal |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["ratio_exhaustive_over_marginal"]
        lines.append(f"| {label[r['version']]} | {r['mode']} | {' / '.join(map(str, r['candidates']))} "
                     f"| {' / '.join(f'{w:.1f}' for w in r['wall_s'])} | {r['marginal_s_per_candidate']:.4f} "
                     f"| {r['peak_rss_mb']:.0f} ({r['peak_tree_pss_mb']:.0f}) "
                     f"| {'n/a' if ratio is None else f'{ratio:,.{0 if ratio >= 100 else 1}f}x'} |")
    lines.append(f"| exhaustive reference SSIM | skimage, 1 process | {ssim.next} pairs timed | "
                 f"{ssim.seconds:.2f} | {exhaustive:.3f} (x {a.cohort_size} pairs) | | 1x |")
    reg = "; ".join(f"{label[k]} {r['wall_s']:.1f} s, peak {r['peak_rss_mb']:.0f} MB" for k, r in register.items())
    text = "\n".join(lines) + (
        f"\n\nCohort {a.cohort_size} crowded look-alike slices (2 volumes x 3 axes x oblique reslicings); "
        f"reference SSIM {ssim.per_pair * 1e3:.3f} ms/pair. Registration (not in the marginal cost): {reg}.\n"
        "Verdicts of each version's biggest default audit, by planted kind:\n"
        + "\n".join(sanity_line(label[r["version"]], r["verdicts_big"]) for r in rows if r["mode"] == "default"))
    print(text)
    result = {"command": " ".join(sys.argv), "cohort": json.loads((cohort / "cohort.json").read_text()),
              "candidates": dict(Counter(r["kind"] for r in truth)), "provenance": provenance, "imports": imports,
              "reference_ssim": {"pairs": ssim.next, "seconds": ssim.seconds, "s_per_pair": ssim.per_pair,
                                 "s_per_candidate_exhaustive": exhaustive,
                                 "mean_value": float(np.mean(ssim.values)) if ssim.values else None},
              "register": register, "rows": rows, "runs": runs, "total_s": time.perf_counter() - t_start}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "table.md").write_text(text + "\n")
    if a.old_ref and not a.keep_worktree:
        subprocess.run(["git", "worktree", "remove", "--force", str(work / "old")], cwd=REPO, capture_output=True)
    for v in versions:
        shutil.rmtree(v.prefect_home, ignore_errors=True)


if __name__ == "__main__":
    main()
