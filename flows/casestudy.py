"""The paper's case study as one flow: a generator that memorized, audited by the gate.

Samples the shipped (or a given) diffusion generator, labels every sample by its reference
SSIM to the nearest training image taken through the generator's grid, registers the
generator's training set as a cohort, runs the audit on the samples and a non-member
control, and writes the case-study report beside the audit's own.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from deepssim.config import AuditSettings

MODELS = Path(__file__).resolve().parents[1] / "deepssim" / "models"
DEFAULT_GENERATOR = MODELS / "casestudy-ddpm32-seed1.pt"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONTROL_SUBJECTS = ("nibabel_anatomical", "heudiconv_crlab")


def check_inputs(generator: Path, data: Path) -> dict:
    """The generator's json, after checking that its training images are where ``data`` says;
    ``ValueError`` with what is missing otherwise (a usage error: nothing has run yet)."""
    meta_path = Path(generator).with_suffix(".json")
    if not Path(generator).is_file() or not meta_path.is_file():
        raise ValueError(f"generator {generator} (and its .json) not found")
    meta = json.loads(meta_path.read_text())
    missing = [row["file"] for row in meta["cohort"] if not (Path(data) / row["file"]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of the generator's {len(meta['cohort'])} training images are not under "
                         f"{data} (first: {missing[0]}); pass --data")
    return meta


@flow(name="casestudy", persist_result=False)
def casestudy(out_dir: str, generator: str = str(DEFAULT_GENERATOR), data: str = str(DEFAULT_DATA),
              n_samples: int = 200, seed: int = 0, sample_steps: int | None = None, db: str | None = None,
              control_subjects: list[str] = list(CONTROL_SUBJECTS), settings: dict | None = None) -> dict:
    """Run the case study into ``out_dir``: ``candidates/`` (samples and control), ``labels.csv``,
    ``audit/`` (the gate's usual outputs), ``samples.csv``, ``casestudy.json``, ``casestudy.html``.

    ``db`` defaults to ``out_dir/casestudy.duckdb`` (the case study's own store); ``settings``
    are the audit's (the default gate unless given).  Returns the case-study summary and
    the report's path.
    """
    from flows.audit import audit, audit_outcome
    from flows.register_cohort import register_cohort
    from tasks.casestudy import casestudy_report_task, sample_task

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # one spelling of the data root for the training files and the registration root: a
    # symlinked root would otherwise put every training file "outside the root" (quarantined)
    data = str(Path(data).resolve())
    meta = check_inputs(Path(generator), Path(data))
    audit_settings = AuditSettings.from_record(settings)
    db = db or str(out / "casestudy.duckdb")
    sampled = sample_task(generator, data, str(out), n_samples, seed, sample_steps, list(control_subjects),
                          audit_settings.thresholds)
    cohort = f"casestudy-{meta['generator_id']}"
    register_cohort(name=cohort, paths=sampled["training_files"], db=db, root=data,
                    settings=settings)
    state = audit(candidates=[sampled["candidates"]], cohort=cohort, out_dir=str(out / "audit"), db=db,
                  settings=settings, return_state=True)
    outcome = audit_outcome(state)
    parameters = {"generator": str(generator), "data": str(data), "n_samples": n_samples, "seed": seed,
                  "sample_steps": sample_steps or meta["config"]["sample_steps"],
                  "control_subjects": list(control_subjects), "cohort": cohort,
                  "thresholds": {"similar": audit_settings.thresholds.similar,
                                 "duplicate": audit_settings.thresholds.duplicate}}
    return casestudy_report_task(str(out), meta, sampled, str(out / "audit"), outcome, parameters)
