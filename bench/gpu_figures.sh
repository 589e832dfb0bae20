#!/usr/bin/env bash
# The GPU figures of docs/performance.md (issue 13 section 5), in one run of under ~9 minutes
# on a machine with a CUDA GPU (sized for one H200):
#   OUT=/path/to/figures bash bench/gpu_figures.sh
# and a quick check of the same script on the CPU with tiny settings (tests/test_bench_gpu_figures.py):
#   OUT=/tmp/figures bash bench/gpu_figures.sh --dry-run
# Each command's output goes to $OUT/<name>.txt (the command first); $OUT/summary.txt collects
# the figure lines. OUT defaults to a new temporary folder (printed at the end).
#
# pretrain_throughput (end_to_end/model_only, target >= 0.90) for the quickstart's and the
# baseline's CFN: a base configuration (fp32, contiguous, eager), then bf16, channels_last and
# torch.compile each switched on alone, then all three on. Then the probe-grid bench and
# bench/ddp_scaling.py (one process per GPU; with one GPU it says so). Runs still waiting
# when BUDGET_S (default 510 s) has passed are skipped and listed, so the script ends in time.
# ONLY=<regex> runs only the commands whose name matches (e.g. ONLY=throughput-quickstart).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d -t jigsawkit-gpu-figures-XXXXXX)}
mkdir -p "$OUT"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
BUDGET_S=${BUDGET_S:-510}
CACHE=$(mktemp -d -t jigsawkit-gpu-figures-cache-XXXXXX)
trap 'rm -rf "$CACHE"' EXIT
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=0

run() {  # run NAME TIMEOUT_S COMMAND...: output to $OUT/NAME.txt, figure lines to the summary
  local name=$1 limit=$2
  shift 2
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then
    echo "$name: skipped (ONLY=$ONLY)" >> "$SUMMARY"
    return
  fi
  if [ "$SECONDS" -ge "$BUDGET_S" ]; then
    echo "$name: skipped (budget of ${BUDGET_S}s spent)" | tee -a "$SUMMARY"
    return
  fi
  echo "\$ $*" > "$OUT/$name.txt"
  timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1
  local rc=$?
  local figures
  figures=$(grep -E "end_to_end/model_only|data_path/reference|^device:|ddp[0-9]+/single|x faster|top1" "$OUT/$name.txt" | tr '\n' ' ')
  echo "$name (rc $rc, ${SECONDS}s): $figures" | tee -a "$SUMMARY"
  [ "$rc" -eq 0 ] || FAILED=1
}

if [ "$DRY" -eq 1 ]; then
  DEVICE=cpu COMPILE=eager
  THROUGHPUT=(--steps 2 --batch-size 4 --rounds 1 --images 16 --skip-data-path)
  BASELINE=(--steps 1 --batch-size 2 --rounds 1 --images 4 --skip-data-path)
  PROBE=(--device cpu --repeat 1 --epochs 2 --images 96 --size 32)
  NPROC=2
  SCALING=(--set pretrain.epochs=1 --set pretrain.max_steps_per_epoch=2
    --set pretrain.data.train_size=128 --set pretrain.data.val_size=64
    --set pretrain.data.test_size=64)
  CONFIGS=("base" "all")
  LIMIT=300
else
  DEVICE=cuda COMPILE=inductor
  THROUGHPUT=(--steps 50 --batch-size 256 --rounds 2)
  BASELINE=(--steps 30 --batch-size 256 --rounds 2)
  PROBE=(--device cuda)
  NPROC=$(nvidia-smi --list-gpus | wc -l)
  SCALING=(--set pretrain.epochs=1 --set pretrain.max_steps_per_epoch=100)
  CONFIGS=("base" "bf16" "channels_last" "compile" "all")
  LIMIT=150
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
fi

flags() {  # the pretrain_throughput flags of a configuration
  case $1 in
    base) echo "--precision fp32" ;;
    bf16) echo "--precision bf16" ;;
    channels_last) echo "--precision fp32 --channels-last" ;;
    compile) echo "--precision fp32 --compile $COMPILE" ;;
    all) echo "--precision bf16 --channels-last --compile $COMPILE" ;;
  esac
}

for model in quickstart baseline; do
  settings=("${THROUGHPUT[@]}")
  [ "$model" = baseline ] && settings=("${BASELINE[@]}")
  for config in "${CONFIGS[@]}"; do
    # shellcheck disable=SC2046 # the flags are words on purpose
    run "throughput-$model-$config" "$LIMIT" python bench/pretrain_throughput.py \
      --device "$DEVICE" --model "$model" --cache "$CACHE/$model" $(flags "$config") "${settings[@]}"
  done
done
run probe-grid "$LIMIT" python bench/probe_grid.py "${PROBE[@]}"
if [ "$NPROC" -gt 1 ]; then
  run ddp-scaling "$LIMIT" python bench/ddp_scaling.py --nproc "$NPROC" "${SCALING[@]}"
else
  echo "ddp-scaling: skipped (one GPU; bench/ddp_scaling.py needs several)" | tee -a "$SUMMARY"
fi
echo "figures in $OUT (${SECONDS}s)"
exit "$FAILED"
