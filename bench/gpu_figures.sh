#!/usr/bin/env bash
# The GPU figures of docs/performance.md, in one run on a machine with CUDA GPUs:
#   bash bench/gpu_figures.sh > gpu_figures.txt 2>&1
# Each block prints the command it ran, then its output. Not measured yet (no GPU so far).
# Not covered yet: bench/pretrain_throughput.py has no torch.compile switch and measures the
# quickstart's CFN only (the baseline's CFN needs a --backbone option there).
set -u
cd "$(dirname "$0")/.."
run() { echo "\$ $*"; "$@"; echo; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
for precision in fp32 bf16; do
  run python bench/pretrain_throughput.py --device cuda --precision "$precision" --steps 50 --batch-size 256
  run python bench/pretrain_throughput.py --device cuda --precision "$precision" --channels-last --steps 50 --batch-size 256
done
run python bench/probe_grid.py --device cuda
gpus=$(nvidia-smi --list-gpus | wc -l)
if [ "$gpus" -gt 1 ]; then
  run python bench/ddp_scaling.py --nproc "$gpus" --set pretrain.epochs=1 --set pretrain.max_steps_per_epoch=100
else
  echo "one GPU: bench/ddp_scaling.py needs several"
fi
