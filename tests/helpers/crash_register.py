"""Subprocess target: register (or record an audit) with an optional pause point, so a
test can ``kill -9`` this process at a known or random moment.

Runs the real register task bodies (``tasks.store.*.fn``) on inputs the test prepared
(manifest, pixels, embeddings of every row), without a Prefect server: the crash-safety
under test is the store's, not Prefect's.  Prints ``PAUSED <point>`` (flushed) and sleeps
when it reaches ``--pause``; prints ``DONE`` when it finishes.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import deepssim.store.database as store_mod
import tasks.store as task_mod

PAUSES = ("none", "after_shard", "in_transaction", "in_audit_record")


def pause(point: str) -> None:
    print(f"PAUSED {point}", flush=True)
    time.sleep(120)


class PausingConnection:
    """A DuckDB connection proxy that pauses after a given SQL statement has run."""

    def __init__(self, con, trigger: str, point: str):
        self._con, self._trigger, self._point = con, trigger, point

    def execute(self, sql, *args, **kwargs):
        result = self._con.execute(sql, *args, **kwargs)
        if sql.lstrip().startswith(self._trigger):
            pause(self._point)
        return result

    def __getattr__(self, name):
        return getattr(self._con, name)


def install_pause(point: str) -> None:
    if point == "after_shard":
        original = store_mod.Store.write_pixel_shard

        def write_then_pause(self, pixels, name):
            out = original(self, pixels, name)
            pause(point)
            return out

        store_mod.Store.write_pixel_shard = write_then_pause
    elif point in ("in_transaction", "in_audit_record"):
        trigger = "INSERT OR REPLACE INTO images" if point == "in_transaction" else "INSERT INTO audit_results"
        original_init = store_mod.Store.__init__

        def init_with_proxy(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            self.con = PausingConnection(self.con, trigger, point)

        store_mod.Store.__init__ = init_with_proxy


def register(args) -> None:
    plan = task_mod.plan_registration_task.fn(args.db, args.cohort, args.manifest, args.pixels, args.model_id, 30)
    emb_path = None
    if plan["embed_rows"]:
        emb_path = str(Path(args.work) / "embeddings.npy")
        np.save(emb_path, np.load(args.embeddings)[plan["embed_rows"]])
    task_mod.register_task.fn(args.db, args.cohort, plan, args.pixels, emb_path, args.model_id,
                              [args.work], 0, 30)


def record_audit(args) -> None:
    results = pd.DataFrame({"image_id": [f"img{i}.png" for i in range(50)], "label": "different",
                            "score": 0.1})
    audit = {"audit_id": "crash-audit", "started_at": "2024-01-01T00:00:00", "cohort": args.cohort,
             "model_id": args.model_id, "verdict": "pass", "complete": True}
    with store_mod.Store(args.db, wait_s=30) as store:
        store.record_audit(audit, results)


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("db", "cohort", "manifest", "pixels", "embeddings", "model_id", "work"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name)
    parser.add_argument("--pause", choices=PAUSES, default="none")
    args = parser.parse_args()
    # The task bodies log through Prefect's run logger; outside a run a plain logger does.
    task_mod.get_run_logger = lambda: logging.getLogger("crash_register")
    install_pause(args.pause)
    (record_audit if args.pause == "in_audit_record" else register)(args)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
