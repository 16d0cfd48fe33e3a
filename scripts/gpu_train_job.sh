#!/usr/bin/env bash
# One device call: train the default model on the GPU within a time budget, then
# measure GPU embedding throughput.  Results land in $OUT (checkpoint, logs, JSON).
#   BUDGET=420 bash scripts/gpu_train_job.sh   (run from the repo root on the device)
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, monai, skimage; print('torch', torch.__version__, 'monai', monai.__version__, 'skimage', skimage.__version__)" | tee -a "$OUT/gpu.txt"
python3 scripts/train_default.py train runs/pool.npz "$OUT" --budget "${BUDGET:-420}" \
  --batch "${BATCH:-256}" --device cuda --phantoms "${PHANTOMS:-240}" --seed 0 --canonical-flips 2>&1 | tail -n 40
for b in 1024 4096; do
  python3 benchmarks/embed_throughput.py --checkpoint "$OUT/deepssim-default.pt" --device cuda \
    --batch $b --images 65536 --repeats 3 | tee -a "$OUT/gpu_throughput.jsonl"
done
