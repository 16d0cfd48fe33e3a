"""End-to-end: the real register_cohort and audit flows on real slices and a real DuckDB file.

Flow runs cost seconds each, so one module fixture runs register + two audits and the
tests below assert on what they left behind (outputs, store, Prefect artifacts).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

CONTRACT = ["image_id", "source_path", "label", "score", "nearest_id", "nearest_path"]
COHORT = "train-cohort"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_dir, candidates_dir, others_dir) -> dict:
    """Register ``train_dir``; audit copies+others (fails) and others only (passes)."""
    from flows.audit import audit
    from flows.register_cohort import register_cohort

    base = tmp_path_factory.mktemp("flows")
    db = str(base / "gate.duckdb")
    folder, copies = candidates_dir
    registered = register_cohort(name=COHORT, paths=[str(train_dir)], db=db)
    mixed = audit(candidates=[str(folder)], cohort=COHORT, out_dir=str(base / "mixed"), db=db, return_state=True)
    clean = audit(candidates=[str(others_dir)], cohort=COHORT, out_dir=str(base / "clean"), db=db,
                  return_state=True)
    return {"db": db, "registered": registered, "mixed": mixed, "clean": clean, "base": base,
            "folder": folder, "copies": copies}


def _artifacts(flow_run_id) -> dict:
    """Keyed artifacts of one flow run, read back through the Prefect API: key -> artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    keys = ["deepssim-gate-summary", "deepssim-top-matches", "deepssim-report"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=keys), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}


def test_registration_stores_every_training_slice(runs, train_dir):
    from deepssim.store.database import Store

    n_files = len(list(train_dir.rglob("*.png")))
    assert runs["registered"]["embedded"] == n_files
    assert runs["registered"]["cohort_images"] == n_files
    with Store(runs["db"], read_only=True) as store:
        images = store.cohort_images(COHORT)
        model_id = runs["registered"]["model_id"]
        assert store.cohort_embeddings(COHORT, model_id).shape == (n_files, 256)
    assert set(images["image_id"]) == {p.relative_to(train_dir).as_posix() for p in train_dir.rglob("*.png")}


def test_audit_flags_copies_and_fails_the_run(runs):
    from flows.audit import GateFailed, audit_outcome

    state, copies = runs["mixed"], runs["copies"]
    outcome = audit_outcome(state)
    assert state.is_failed()
    assert outcome["exit_code"] == 1 and outcome["verdict"] == "fail"
    # what `audit(...)` called directly, Prefect's engine and its workers get from the state:
    # the gate's own exception (a dict result made Prefect raise TypeError instead)
    with pytest.raises(GateFailed) as failed:
        state.result()
    assert failed.value.outcome == outcome and str(failed.value) == state.message
    from deepssim.audit.outputs import image_ref

    for copy_id in copies:  # named by opaque refs: a run's state is shown wherever the UI is
        assert image_ref(copy_id) in state.message and copy_id not in state.message, state.message
    assert outcome["audit_id"] in state.message

    out = runs["base"] / "mixed"
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert list(verdicts.columns[:len(CONTRACT)]) == CONTRACT
    audited = sorted(p.name for p in runs["folder"].iterdir())
    assert sorted(verdicts["image_id"]) == audited  # one row per audited image
    labels = verdicts.set_index("image_id")
    for copy_id, source_id in copies.items():
        assert labels.loc[copy_id, "label"] == "duplicate", labels.loc[copy_id].to_dict()
        assert labels.loc[copy_id, "nearest_id"] == source_id
        assert Path(labels.loc[copy_id, "nearest_path"]).name == Path(source_id).name
    others = labels.drop(index=list(copies))
    assert len(others) and (others["label"] != "duplicate").all(), others[["label", "score"]]
    assert verdicts["score"].between(-1, 1).all()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "fail"
    assert summary["counts"]["duplicate"] == len(copies)
    assert sum(summary["counts"][k] for k in ("duplicate", "similar", "different")) == len(audited)
    assert summary["thresholds"]["duplicate"] == 0.85 and summary["thresholds"]["similar"] == 0.60
    assert summary["model"]["model_id"] == runs["registered"]["model_id"]
    # the arithmetic the embeddings were made with is on record, as resolved on this machine
    from deepssim.metric.embed import inference_settings

    assert summary["model"]["inference"] == inference_settings(summary["settings"]["device"],
                                                               summary["settings"]["precision"])
    assert summary["cohort"]["name"] == COHORT


def test_report_shows_evidence_inline(runs):
    html = (runs["base"] / "mixed" / "report.html").read_text().replace("<wbr>", "")
    evidence = html[html.index("Top evidence pairs"):html.index("Worst candidates</h2>")]
    for copy_id, source_id in runs["copies"].items():
        assert copy_id in evidence and source_id in evidence
    assert evidence.count("data:image/png;base64,") >= 2 * len(runs["copies"])
    assert f"Candidate root</dt><dd>{runs['folder']}</dd>" in html
    assert 'src="http' not in html and "href=\"http" not in html.replace('href="http://www.w3.org', "")


def test_audit_artifacts_carry_ids_not_pixels(runs):
    state = runs["mixed"]
    artifacts = _artifacts(state.state_details.flow_run_id)
    assert set(artifacts) == {"deepssim-gate-summary", "deepssim-top-matches", "deepssim-report"}

    summary = artifacts["deepssim-gate-summary"]
    assert summary.type == "markdown" and "FAIL" in summary.data and COHORT in summary.data

    table = artifacts["deepssim-top-matches"]
    assert table.type == "table" and "base64" not in str(table.data)
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    from deepssim.audit.outputs import image_ref

    by_ref = {r["candidate"]: r for r in rows}
    for copy_id, source_id in runs["copies"].items():
        row = by_ref[image_ref(copy_id)]
        assert row["label"] == "duplicate" and row["nearest"] == image_ref(source_id)
    assert set(rows[0]) == {"rank", "candidate", "label", "score", "nearest"}
    assert not any(c in str(table.data) for c in list(runs["copies"]) + list(runs["copies"].values()))

    link = artifacts["deepssim-report"]
    report_uri = (runs["base"] / "mixed" / "report.html").resolve().as_uri()
    assert link.data == f"[DeepSSIM audit report]({report_uri})"  # Prefect stores links as markdown


def test_audit_of_other_subjects_passes(runs, others_dir):
    from flows.audit import audit_outcome

    state = runs["clean"]
    outcome = audit_outcome(state)
    assert state.is_completed(), state.message
    assert outcome["exit_code"] == 0 and outcome["verdict"] == "pass"
    verdicts = pd.read_csv(runs["base"] / "clean" / "verdicts.csv")
    assert len(verdicts) == len(list(others_dir.iterdir()))
    assert (verdicts["label"] != "duplicate").all()
    assert json.loads((runs["base"] / "clean" / "summary.json").read_text())["verdict"] == "pass"
    assert set(_artifacts(state.state_details.flow_run_id)) == {
        "deepssim-gate-summary", "deepssim-top-matches", "deepssim-report"}


def test_audits_are_recorded_in_the_store(runs):
    from deepssim.store.database import Store
    from flows.audit import audit_outcome

    with Store(runs["db"], read_only=True) as store:
        audits = store.audits()
        recorded = dict(zip(audits["audit_id"], audits["verdict"]))
        mixed_id = audit_outcome(runs["mixed"])["audit_id"]
        results = store.audit_results(mixed_id)
    assert recorded[mixed_id] == "fail"
    assert recorded[audit_outcome(runs["clean"])["audit_id"]] == "pass"
    assert len(results) == len(list(runs["folder"].iterdir()))


def test_reregistration_embeds_only_new_images(runs, train_dir, extra_train_image, tmp_path):
    """Runs last in this module: it adds an image to the cohort the audits above used."""
    from flows.register_cohort import register_cohort

    again = register_cohort(name=COHORT, paths=[str(train_dir)], db=runs["db"])
    assert again["embedded"] == 0 and again["new_or_changed"] == 0
    assert again["cohort_images"] == runs["registered"]["cohort_images"]

    grown = tmp_path / "train"
    shutil.copytree(train_dir, grown)
    (grown / "extra").mkdir()
    shutil.copy(extra_train_image, grown / "extra" / extra_train_image.name)
    added = register_cohort(name=COHORT, paths=[str(grown)], db=runs["db"])
    assert added["embedded"] == 1 and added["new_images"] == 1
    assert added["cohort_images"] == runs["registered"]["cohort_images"] + 1

    # another model (e.g. the shipped one after an upgrade): unchanged images get embedded too
    from deepssim.metric.checkpoint import save_checkpoint
    from deepssim.metric.model import DeepSSIMEncoder
    from deepssim.store.database import Store

    other = save_checkpoint(DeepSSIMEncoder(), tmp_path / "other.pt")
    upgraded = register_cohort(name=COHORT, paths=[str(grown)], db=runs["db"], model_path=str(tmp_path / "other.pt"))
    assert upgraded["new_or_changed"] == 0 and upgraded["embedded"] > 0
    with Store(runs["db"], read_only=True) as store:
        assert len(store.missing_cohort_embeddings(COHORT, other.model_id)) == 0


def test_report_reads_on_a_phone_and_a_desktop_in_a_real_browser(runs, tmp_path):
    """The real audit report in headless Chromium at 420 and 1400 CSS px: nothing runs past
    the right edge (wide tables scroll inside their own box), evidence images stay large,
    every evidence pair of a verified copy shows the aligned training image and the
    difference, provenance values get a readable column."""
    from helpers.browser import chromium, measure

    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium/Chrome on this machine (.ci/run installs Debian's chromium)")
    report = runs["base"] / "mixed" / "report.html"
    for width in (420, 1400):
        m = measure(binary, report, width, tmp_path)
        assert m["viewport"] == width, m
        assert m["outside"] == [] and m["scroll_width"] <= width, m
        assert len(m["images_per_pair"]) >= len(runs["copies"]) and min(m["images_per_pair"]) >= 2, m
        assert m["images_per_pair"].count(4) >= len(runs["copies"]), m  # + aligned + difference
        assert min(m["evidence_images"]) >= 120, m
        assert min(m["value_cells"]) >= 150, m
        assert m["histogram"] and m["histogram"][0] >= min(width - 80, 600), m
