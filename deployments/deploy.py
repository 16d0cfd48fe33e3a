"""Deploy the gate's Prefect deployments (``deployments/prefect.yaml``) to the Prefect API
in ``PREFECT_API_URL``.

    python deployments/deploy.py [--prefect-file FILE] [--pool NAME]

Creates the process work pool if it is missing, fills the deploy-time variables of
``prefect.yaml`` that are not set (``DEEPSSIM_REPO``: this repository; ``DEEPSSIM_DB``:
the default store; ``DEEPSSIM_OUT``: ``$DEEPSSIM_HOME/release-gate``), checks that the
release gate knows what to audit (``DEEPSSIM_COHORT``, ``DEEPSSIM_CANDIDATES``), then
runs ``prefect --no-prompt deploy --all``.  Plain subprocesses: no import of the gate.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL = "deepssim-process"


def deploy_env(base: dict | None = None) -> dict:
    """The environment ``prefect deploy`` runs with (defaults for unset DEEPSSIM_* names)."""
    env = dict(os.environ if base is None else base)
    home = Path(env.get("DEEPSSIM_HOME", Path.home() / ".deepssim")).expanduser()
    env.setdefault("DEEPSSIM_REPO", str(REPO))
    env.setdefault("DEEPSSIM_DB", str(home / "deepssim.duckdb"))
    env.setdefault("DEEPSSIM_OUT", str(home / "release-gate"))
    missing = [k for k in ("DEEPSSIM_COHORT", "DEEPSSIM_CANDIDATES") if not env.get(k)]
    if missing:
        raise SystemExit(f"set {' and '.join(missing)} (what the scheduled release gate audits) and rerun")
    return env


def _prefect(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "prefect", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, check=check, text=True, capture_output=True)


def ensure_pool(pool: str, env: dict) -> None:
    """Create the process work pool unless it exists."""
    if _prefect("work-pool", "inspect", pool, env=env, check=False).returncode != 0:
        _prefect("work-pool", "create", pool, "--type", "process", env=env)


def deploy(prefect_file: Path = REPO / "deployments" / "prefect.yaml", pool: str = POOL) -> str:
    """Create/update every deployment of ``prefect_file``; returns prefect's output."""
    env = deploy_env()
    if not env.get("PREFECT_API_URL"):
        raise SystemExit("set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api after `prefect server start`)")
    ensure_pool(pool, env)
    done = _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"prefect deploy failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefect-file", type=Path, default=REPO / "deployments" / "prefect.yaml")
    parser.add_argument("--pool", default=POOL)
    args = parser.parse_args()
    print(deploy(args.prefect_file.resolve(), args.pool))


if __name__ == "__main__":
    main()
