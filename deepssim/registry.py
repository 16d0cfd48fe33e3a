"""Model registry queries over the store's ``models`` table (champion / challenger /
retired).  The champion is the model audits use unless one is named explicitly."""
from __future__ import annotations

from pathlib import Path

from .store import Store


def champion(store: Store) -> dict | None:
    """The most recently promoted champion whose weights file still exists."""
    rows = store.con.execute(
        "SELECT model_id, path FROM models WHERE status = 'champion' "
        "ORDER BY promoted_at DESC NULLS LAST, created_at DESC").fetchall()
    for model_id, path in rows:
        if path and Path(path).is_file():
            return {"model_id": model_id, "path": path}
    return None


def champion_path(store: Store) -> Path | None:
    found = champion(store)
    return Path(found["path"]) if found else None
