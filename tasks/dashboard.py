"""Prefect UI dashboard artifacts built from the store (ids, verdicts, counts, metrics —
never pixels, paths of training images or subject names)."""
from __future__ import annotations

from prefect import task

from deepssim.store import Store

HISTORY_KEY = "deepssim-audit-history"
REGISTRY_KEY = "deepssim-model-registry"


@task(name="publish-dashboard", persist_result=False)
def publish_dashboard_task(db: str, wait_s: float = 60.0, limit: int = 50) -> dict:
    """Publish ``deepssim-audit-history`` and ``deepssim-model-registry`` table artifacts."""
    from prefect.artifacts import create_table_artifact

    from deepssim.store import audit_history, registry_table

    with Store(db, wait_s=wait_s) as store:
        history, models = audit_history(store, limit), registry_table(store)
    create_table_artifact(key=HISTORY_KEY, table=history or [{"verdict": "no audits yet"}],
                          description=f"DeepSSIM gate: the {limit} most recent audits")
    create_table_artifact(key=REGISTRY_KEY, table=models or [{"status": "no models yet"}],
                          description="DeepSSIM model registry (champion, challengers, retired)")
    return {"audits": len(history), "models": len(models)}
