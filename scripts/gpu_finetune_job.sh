#!/usr/bin/env bash
# Second device call: fine-tune the first GPU model (runs/gpu1) with a lower LR.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 scripts/train_default.py train runs/pool.npz "$OUT" --budget "${BUDGET:-280}" --batch 512 --device cuda \
  --phantoms 240 --seed 1 --init "${INIT:-runs/gpu1/deepssim-default.pt}" --lr "${LR:-1e-3}" 2>&1 | tail -n 30
