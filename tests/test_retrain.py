"""Retraining: subject hold-out, the promotion rule, champion/challenger decisions stored
in the registry, re-embedding after a promotion, audits that follow the new champion."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from deepssim.evaluation.retraining import PromotionRule, RetrainConfig, decide, split_holdout
from deepssim.evaluation.scoring import subject_of

SAMPLE = Path(__file__).resolve().parents[1] / "deepssim" / "sample_data"
# tiny but real: a few SGD steps on the sample cohort + two phantom volumes
TINY = {"steps": 0, "time_budget_s": None, "batch_size": 8, "eval_every": 1, "eval_pairs": 32,
        "train_phantom_volumes": 1, "val_phantom_volumes": 2, "eval_phantom_volumes": 2,
        "benchmark_per_kind": 4, "device": "cpu"}


def test_subject_rule():
    assert subject_of("sub-01/scan_s003.png") == "sub-01"
    assert subject_of("sub-01/ses/t1.nii.gz#z=4", "sub-01/ses/t1.nii.gz") == "sub-01"
    assert subject_of("t1.nii.gz#z=4", "t1.nii.gz") == "t1.nii.gz"
    assert subject_of("lone.png") == "lone.png"


def test_holdout_is_stable_and_never_empty():
    subjects = [f"s{i}" for i in range(40)]
    train, held = split_holdout(subjects, 0.25)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(subjects)
    assert 4 <= len(held) <= 18
    # adding subjects never moves an already held-out subject into training
    _, held_more = split_holdout(subjects + [f"new{i}" for i in range(20)], 0.25)
    assert set(held) <= set(held_more)
    assert len(split_holdout(["a", "b"], 0.01)[1]) == 1
    assert split_holdout(["only"], 0.5) == (["only"], [])


def test_promotion_rule():
    champ = {"criterion": 0.20, "mae_augmented": 0.15, "copy_rate_gt_0.85": 0.93, "different_rate_le_0.60": 0.95,
             "benchmark": {"macro_f1": 0.80}}
    better = {**champ, "criterion": 0.15, "mae_augmented": 0.12, "benchmark": {"macro_f1": 0.82}}
    assert decide(champ, better)[0]
    assert not decide(champ, {**better, "criterion": 0.198})[0]          # below min_improvement
    assert not decide(champ, {**better, "benchmark": {"macro_f1": 0.7}})[0]
    ok, reason = decide(champ, {**better, "different_rate_le_0.60": 0.80})
    assert not ok and "dissimilar" in reason
    assert decide(champ, {**better, "criterion": 0.198}, PromotionRule(min_improvement=0.0))[0]
    with pytest.raises(ValueError):
        RetrainConfig.from_record({"stepz": 3})


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Path:
    """The bundled sample cohort registered once under the shipped model."""
    from flows.register_cohort import register_cohort

    db = tmp_path_factory.mktemp("base") / "gate.duckdb"
    register_cohort(name="sample", paths=[str(SAMPLE / "train")], db=str(db))
    return db


@pytest.fixture
def db(registered, tmp_path) -> Path:
    """A private copy of the registered store (database + pixel shards)."""
    target = tmp_path / "gate.duckdb"
    shutil.copy(registered, target)
    shutil.copytree(registered.with_name(registered.name + ".pixels"), target.with_name(target.name + ".pixels"))
    return target


def _models(db: Path) -> dict:
    from deepssim.store.database import Store

    with Store(db) as store:
        frame = store.models()
    return {r["model_id"]: r for r in frame.to_dict("records")}


@pytest.mark.slow
@pytest.mark.prefect
def test_worse_challenger_is_not_promoted(db):
    from deepssim.metric.checkpoint import DEFAULT_MODEL, read_meta
    from flows.retrain import retrain

    start = time.perf_counter()
    result = retrain(cohort="sample", db=str(db), settings={**TINY, "init": "scratch", "steps": 0})
    seconds = time.perf_counter() - start
    print(f"retrain (scratch, 0 steps) took {seconds:.1f}s")
    assert seconds < 180
    assert result["promoted"] is False and result["reason"].startswith("kept champion")
    default_id = read_meta(DEFAULT_MODEL).model_id
    assert result["champion"] == default_id
    models = _models(db)
    assert models[default_id]["status"] == "champion"
    row = models[result["challenger"]]
    assert row["status"] == "challenger" and row["reason"] == result["reason"]
    metrics = json.loads(row["metrics"])
    # both models were scored on the same fixed set, benchmark included
    assert metrics["champion_id"] == default_id
    assert metrics["eval"]["pairs"] == metrics["champion_eval"]["pairs"] > 0
    assert metrics["eval"]["criterion"] > metrics["champion_eval"]["criterion"]
    assert "macro_f1" in metrics["eval"]["benchmark"] and "macro_f1" in metrics["champion_eval"]["benchmark"]
    assert Path(row["path"]).is_file() and Path(row["path"]).parent.name == "gate.duckdb.models"
    assert result["data"]["heldout_subjects"] >= 1 and result["data"]["eval_cohort_images"] > 0


def _install_bad_champion(db: Path) -> str:
    """Promote a random-weight model (cohort re-embedded under it) as the champion."""
    from deepssim.metric.checkpoint import save_checkpoint
    from deepssim.metric.embed import Embedder
    from deepssim.metric.model import DeepSSIMEncoder
    from deepssim.store.registry import models_dir, promote, record_model, reembed_cohorts
    from deepssim.store.database import Store

    import torch

    torch.manual_seed(3)
    model = DeepSSIMEncoder()
    path = models_dir(db) / "random.pt"
    meta = save_checkpoint(model, path, training={"note": "random weights"})
    with Store(db) as store:
        record_model(store, meta, path, "challenger", None, "test fixture")
        reembed_cohorts(store, meta.model_id, Embedder(model, device="cpu").embed)
        promote(store, meta.model_id, "test: a bad champion")
    return meta.model_id


@pytest.mark.slow
@pytest.mark.prefect
def test_better_challenger_is_promoted_and_audits_follow_it(db, tmp_path):
    from deepssim.metric.checkpoint import DEFAULT_MODEL, read_meta, save_checkpoint
    from deepssim.metric.model import DeepSSIMEncoder
    from deepssim.store.registry import champion, promote
    from deepssim.store.database import Store, StoreError
    from flows.audit import audit, audit_outcome
    from flows.retrain import retrain

    bad = _install_bad_champion(db)
    result = retrain(cohort="sample", db=str(db),
                     settings={**TINY, "init": str(DEFAULT_MODEL), "steps": 1, "lr": 1e-7, "warmup_steps": 1})
    assert result["champion"] == bad
    assert result["promoted"] is True, result["reason"]
    new = result["challenger"]
    # the challenger is the init checkpoint's network (the shipped model has canonical flips,
    # the random champion not)
    assert json.loads(_models(db)[new]["config"]) == json.loads(_models(db)[bad]["config"]) | {
        "canonical_flips": read_meta(DEFAULT_MODEL).encoder.canonical_flips}
    assert result["reembedded"]["embedded"] == 37
    models = _models(db)
    assert models[new]["status"] == "champion" and models[bad]["status"] == "retired"
    assert models[new]["promoted_at"] is not None and models[new]["reason"].startswith("promoted")
    with Store(db) as store:
        assert champion(store)["model_id"] == new
        assert len(store.missing_cohort_embeddings("sample", new)) == 0
        # a model the cohort is not embedded under can neither be searched nor promoted
        stray = save_checkpoint(DeepSSIMEncoder(), tmp_path / "stray.pt")
        store.ensure_model(stray, tmp_path / "stray.pt", status="challenger")
        with pytest.raises(StoreError, match="no embedding"):
            next(store.iter_cohort_embeddings("sample", stray.model_id))
        with pytest.raises(StoreError, match="re-embed"):
            promote(store, stray.model_id, "should refuse")

    state = audit(candidates=[str(SAMPLE / "candidates")], cohort="sample", out_dir=str(tmp_path / "audit"),
                  db=str(db), settings={"verification": {"enabled": False}}, return_state=True)
    outcome = audit_outcome(state)
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["model"]["model_id"] == new, outcome
    with Store(db) as store:
        assert store.audits()["model_id"].tolist() == [new]
    _check_registry_cli(db, new, bad)


def _check_registry_cli(db: Path, champion_id: str, retired_id: str) -> None:
    """``deepssim model list|show|promote`` on the store of the promotion test."""
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["model", "list", "--db", str(db)])
    assert listed.exit_code == 0 and champion_id in listed.output and "retired" in listed.output
    shown = runner.invoke(app, ["model", "show", champion_id, "--db", str(db)])
    assert shown.exit_code == 0
    assert json.loads(shown.output)["status"] == "champion"
    assert runner.invoke(app, ["model", "show", "deepssim-nope", "--db", str(db)]).exit_code == 4
    # rolling back to the retired model: it is still embedded, so promotion goes through
    back = runner.invoke(app, ["model", "promote", retired_id, "--reason", "rollback", "--db", str(db),
                               "--device", "cpu"])
    assert back.exit_code == 0, back.output
    assert _models(db)[retired_id]["status"] == "champion" and _models(db)[champion_id]["status"] == "retired"
