"""Benchmark builder and runner on a few real subjects of ../shared/data."""
import csv
from pathlib import Path

import numpy as np
import pytest

from deepssim.evaluation.benchmark import METHODS, _quantise, build_benchmark, discover, load_benchmark, run_benchmark
from deepssim.config import Thresholds
from deepssim.metric.ssim import reference_ssim

from realdata import SHARED_DATA, require_shared_data

SLICES = SHARED_DATA / "slices"
SUBJECTS = {"heudiconv_ke6hL9Lm", "dipy_piesno", "nibabel_example4d", "dipy_s0_10slices"}


# Not the defaults, so that labels visibly follow the thresholds given, not 0.60 / 0.85.
NEIGHBOUR_THRESHOLDS = Thresholds(similar=0.70, duplicate=0.87, source="test")


def build(out: Path, seed: int = 3, strength: float = 0.6, **extra) -> dict:
    require_shared_data()
    return build_benchmark(SLICES, out, seed=seed, subjects=SUBJECTS, max_per_subject=4,
                           n_duplicates=6, n_similar=6, n_different=6, nuisance_strength=strength, **extra)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    build(out)
    return out


def read_truth(path: Path) -> list[dict]:
    with open(path / "truth.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def bench_nb(tmp_path_factory) -> tuple[Path, dict]:
    """The ``bench`` benchmark plus 8 neighbour candidates, with non-default thresholds."""
    out = tmp_path_factory.mktemp("bench_nb")
    return out, build(out, n_neighbours=8, thresholds=NEIGHBOUR_THRESHOLDS)


def test_builder_is_deterministic_and_subject_disjoint(bench, tmp_path):
    again = tmp_path / "again"
    summary = build(again)
    assert read_truth(bench) == read_truth(again)
    for row in read_truth(bench):
        assert (bench / row["candidate"]).read_bytes() == (again / row["candidate"]).read_bytes()
    assert not set(summary["members"]) & set(summary["non_members"])
    train_subjects = {p.name for p in (bench / "train").iterdir()}
    assert train_subjects == set(summary["members"])
    for row in read_truth(bench):
        if row["kind"] == "different":
            assert row["source"].split()[1].split("/")[0] in summary["non_members"]
    build(tmp_path / "other", seed=4)
    assert read_truth(tmp_path / "other") != read_truth(bench)


def test_truth_rows_are_consistent(bench):
    rows = read_truth(bench)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("duplicate") == 6 and kinds.count("similar") == 6
    for r in rows:
        assert len(Path(r["candidate"]).stem) == 16  # random hex, nothing given away
        if r["kind"] == "similar":
            assert 0.55 < float(r["ssim"]) <= 0.9
        if r["kind"] == "duplicate":
            assert float(r["ssim"]) == 1.0 and r["label"] == "duplicate"


def test_verification_matches_duplicates_to_their_source_where_raw_ssim_fails(bench):
    """Model-free: exhaustive verification matches each duplicate to its exact source
    slice — also on a low-resolution EPI volume (nibabel_example4d, 24 slices) whose
    neighbouring slices look alike — and scores it above 0.95, far above raw SSIM, which
    misses most of them."""
    data = load_benchmark(bench)
    ver, nearest = METHODS["verification (exhaustive, no model)"](data)
    raw, _ = METHODS["raw SSIM (exhaustive)"](data)
    ver, raw = np.asarray(ver), np.asarray(raw)
    dup = np.flatnonzero([r["kind"] == "duplicate" for r in data.truth])
    for i in dup:
        assert data.train_files[nearest[i]] == data.truth[i]["nearest_train"]
    assert (ver[dup] > 0.95).all()
    assert (ver[dup] > raw[dup] + 0.15).all()
    assert np.mean(raw[dup] > 0.85) < 0.5


def test_deepssim_plus_verification_finds_planted_duplicates(bench, tmp_path):
    res = run_benchmark(bench, methods=["DeepSSIM + verification"], out_dir=tmp_path / "res")
    row = res["methods"]["DeepSSIM + verification"]
    assert row["per_class"]["duplicate"]["recall"] == 1.0
    assert (tmp_path / "res" / "results.md").is_file() and (tmp_path / "res" / "results.png").is_file()


def test_neighbours_are_left_out_member_slices_labelled_by_aligned_ssim(bench_nb):
    """Each neighbour is a member subject's slice that is not a training file; its ``ssim``
    is the reference SSIM of the clean (un-nuisanced) slice to ``nearest_train``, and the
    best over every training image; adjacent slices (within 2 of a registered one) come first."""
    out, summary = bench_nb
    rows = [r for r in read_truth(out) if r["kind"] == "neighbour"]
    assert len(rows) == 8 == summary["counts"]["neighbour"]
    data = load_benchmark(out)
    train = dict(zip(data.train_files, data.train))
    source = discover(SLICES, 128, SUBJECTS)
    clean = dict(zip(source.names, _quantise(source.images)))
    order = {n: i for i, n in enumerate(source.names)}  # slice order within a subject
    assert len({r["source"] for r in rows}) == len(rows)
    assert summary["neighbours_adjacent"] == len(rows)  # these volumes have plenty of adjacent slices
    for r in rows:
        name = r["source"].removeprefix("neighbour ")
        subject = name.split("/")[0]
        assert subject in summary["members"]
        assert f"train/{name}.png" not in train
        assert r["nearest_train"] in train
        score = reference_ssim(clean[name], train[r["nearest_train"]])
        assert float(r["ssim"]) == pytest.approx(score, abs=1e-4)
        assert score >= max(reference_ssim(clean[name], t) for t in train.values()) - 1e-6
        registered = [order[f.removeprefix("train/").removesuffix(".png")] for f in train
                      if f.startswith(f"train/{subject}/")]
        assert min(abs(order[name] - i) for i in registered) <= 2


def test_no_neighbours_builds_exactly_what_a_build_without_them_builds(bench, bench_nb, tmp_path):
    """``n_neighbours=0`` changes no byte of truth.csv or the candidates; with neighbours,
    every other candidate is still the same image (their randomness is not disturbed)."""
    build(tmp_path, n_neighbours=0)
    assert (tmp_path / "truth.csv").read_bytes() == (bench / "truth.csv").read_bytes()
    for row in read_truth(bench):
        assert (tmp_path / row["candidate"]).read_bytes() == (bench / row["candidate"]).read_bytes()
    key = lambda r: (r["kind"], r["source"], r["ssim"], r["nearest_train"])  # noqa: E731
    without = sorted((key(r), (bench / r["candidate"]).read_bytes()) for r in read_truth(bench))
    out, _ = bench_nb
    with_nb = sorted((key(r), (out / r["candidate"]).read_bytes()) for r in read_truth(out)
                     if r["kind"] != "neighbour")
    assert with_nb == without


def test_labels_follow_the_thresholds_for_every_kind(bench_nb):
    out, summary = bench_nb
    rows = read_truth(out)
    t = NEIGHBOUR_THRESHOLDS
    for r in rows:
        s = float(r["ssim"])
        expected = "duplicate" if s > t.duplicate else "similar" if s > t.similar else "different"
        assert r["label"] == expected
    assert summary["counts"] == {k: sum(r["kind"] == k for r in rows)
                                 for k in ("duplicate", "similar", "different", "neighbour")}
    assert summary["labels"] == {k: sum(r["label"] == k for r in rows)
                                 for k in ("duplicate", "similar", "different")}
    assert summary["thresholds"] == {"similar": 0.70, "duplicate": 0.87}


def test_cli_benchmark_build_takes_neighbours(tmp_path):
    """``deepssim benchmark build --neighbours N`` plants N neighbours (in-process typer)."""
    from typer.testing import CliRunner

    from flows.cli import app

    require_shared_data()
    src = tmp_path / "src"
    src.mkdir()
    for subject in ("dipy_piesno", "dipy_s0_10slices"):
        (src / subject).symlink_to(next(SLICES.rglob(subject)), target_is_directory=True)
    args = ["benchmark", "build", str(src), str(tmp_path / "b"), "--n", "2", "--max-per-subject", "3",
            "--neighbours", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [r["kind"] for r in read_truth(tmp_path / "b")].count("neighbour") == 3
    assert CliRunner().invoke(app, args[:-1] + ["-1"]).exit_code == 2


def test_neighbour_selection_prefers_slices_next_to_registered_ones():
    """Model- and data-free: left-out member slices within 2 of a registered slice come
    first, the rest fill up, non-members never appear, and the count is capped."""
    from deepssim.evaluation.benchmark import SourceImages, _neighbour_rows

    subjects = np.array(["a"] * 10 + ["b"] * 4)
    data = SourceImages(np.zeros((14, 2, 2), np.float32), subjects, [f"s{i}" for i in range(14)])
    train_rows = np.array([0, 1])  # registered: a's slices 0 and 1; adjacent: 2, 3
    rows, adjacent = _neighbour_rows(data, ["a"], train_rows, 3, np.random.default_rng(0))
    assert adjacent == 2 and sorted(rows[:2]) == [2, 3] and rows[2] in range(4, 10)
    rows, adjacent = _neighbour_rows(data, ["a"], train_rows, 50, np.random.default_rng(0))
    assert adjacent == 2 and sorted(rows) == list(range(2, 10))
