"""Helpers shared by the flows: run identity, scratch space, summary skeleton."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from deepssim.config import AuditSettings, default_db_path
from deepssim.audit import package_versions
from deepssim.audit import settings_record


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def resolve_db(db: str | None) -> str:
    return str(Path(db).expanduser().resolve()) if db else str(default_db_path())


@contextmanager
def scratch_dir(prefix: str):
    """A private temporary folder for candidate pixels; removed afterwards so no copy of
    patient-derived pixels is left behind."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def summary_skeleton(settings: AuditSettings, cohort: str, candidate_root: str, audit_id: str) -> dict:
    """Everything known before the audit runs; verdict starts as ``error`` so a summary
    written at any point of a crash never says ``pass``."""
    return {
        "verdict": "error",
        "reason": "audit did not finish",
        "complete": False,
        "counts": {},
        "volume_counts": {},
        "thresholds": {"similar": settings.thresholds.similar, "duplicate": settings.thresholds.duplicate,
                       "source": settings.thresholds.source},
        "policy": settings_record(settings)["policy"],
        "settings": settings_record(settings),
        "cohort": {"name": cohort},
        "model": {},
        "candidate_root": candidate_root,
        "validation": None,
        "versions": package_versions(),
        "run": {"audit_id": audit_id, "started_at": now_iso(), "finished_at": None},
    }
