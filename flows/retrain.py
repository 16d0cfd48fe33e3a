"""The retrain flow: train a challenger on a registered cohort (+ phantoms), compare it
with the champion on a fixed held-out evaluation set, promote it only if it is better,
and re-embed every registered cohort under the new champion.

Triggered by the ``deepssim.cohort.registered`` event through the
``retrain-on-new-cohort`` deployment (``deployments/prefect.yaml``), or run by hand with
``deepssim train --cohort NAME``.  The promotion rule is
:class:`deepssim.evaluation.retraining.PromotionRule`; the decision and its reason are stored in
the model registry with both models' metrics.
"""
from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger

from deepssim.evaluation import PromotionRule, RetrainConfig, decide
from deepssim.store import models_dir
from tasks.dashboard import publish_dashboard_task
from tasks.store import resolve_model_task
from tasks.train import (evaluate_models_task, prepare_retrain_data_task, promote_task,
                         record_challenger_task, reembed_cohorts_task, train_challenger_task)

from .common import resolve_db, scratch_dir


@flow(name="retrain", persist_result=False, validate_parameters=True)
def retrain(cohort: str, db: str | None = None, settings: dict | None = None, promote: bool = True,
            min_improvement: float = PromotionRule.min_improvement, wait_s: float = 120.0) -> dict:
    """Retrain DeepSSIM on ``cohort``; see the module docstring.

    ``settings``: :class:`deepssim.evaluation.retraining.RetrainConfig` fields (``init``, ``steps``,
    ``time_budget_s``, ``device``, ``benchmark_per_kind`` ...).  ``promote=False`` records
    the decision but leaves a winning challenger as a challenger.  Returns ids, the
    decision and the metrics (numbers only)."""
    log = get_run_logger()
    cfg = RetrainConfig.from_record(settings)
    db = resolve_db(db)
    champ = resolve_model_task(db, None, wait_s)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    out_path = models_dir(db) / f"deepssim-{stamp}.pt"
    with scratch_dir("deepssim-retrain-") as work:
        data = prepare_retrain_data_task(db, cohort, cfg.as_record(), str(work), champ["input_size"], wait_s)
        challenger = train_challenger_task(data, champ["path"], cfg.as_record(), str(out_path))
        if challenger["model_id"] == champ["model_id"]:
            out_path.unlink(missing_ok=True)
            out_path.with_suffix(".json").unlink(missing_ok=True)
            publish_dashboard_task(db, wait_s)
            return {"cohort": cohort, "champion": champ["model_id"], "challenger": challenger["model_id"],
                    "promoted": False, "reason": "challenger is identical to the champion (no training step)",
                    "data": _counts(data["summary"])}
        metrics = evaluate_models_task(champ["path"], challenger["path"], data, cfg.as_record())
    better, reason = decide(metrics["champion"], metrics["challenger"], PromotionRule(min_improvement=min_improvement))
    if better and not promote:
        reason += " (promotion disabled: left as challenger)"
    decision = {"promote": better and promote, "better": better, "reason": reason,
                "rule": PromotionRule(min_improvement=min_improvement).__dict__}
    record_challenger_task(db, challenger, metrics, decision, wait_s)
    reembedded = None
    if decision["promote"]:
        # embeddings first, then the switch: an audit never sees a champion it cannot search with
        reembedded = reembed_cohorts_task(db, challenger["path"], challenger["model_id"], cfg.device, wait_s)
        promote_task(db, challenger["model_id"], reason, wait_s)
    publish_dashboard_task(db, wait_s)
    log.info("retrain on cohort %s: %s", cohort, reason)
    return {"cohort": cohort, "champion": champ["model_id"], "challenger": challenger["model_id"],
            "promoted": decision["promote"], "reason": reason, "steps": challenger["steps"],
            "train_seconds": challenger["seconds"], "metrics": _numbers(metrics),
            "reembedded": reembedded, "data": _counts(data["summary"])}


def _counts(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, int)}


def _numbers(metrics: dict) -> dict:
    keep = ("criterion", "mae_aligned", "mae_augmented", "copy_rate_gt_0.85", "different_rate_le_0.60",
            "spearman_augmented", "benchmark")
    return {name: {k: m.get(k) for k in keep} for name, m in metrics.items()}
