#!/usr/bin/env bash
# Every GPU number the README reports, in one run of at most 9 minutes on an H200:
#   1. Table 2 on real mammograms: 5-fold cross-validation by patient of the three decoders on mini-MIAS
#      (bench/crossval_mias.sh; under a 300 s limit),
#   2. prediction as a user runs it, eager against a CUDA graph per shape (bench/pipeline.py),
#   3. where a training step's time goes, by kind of kernel (bench/profile_step.py),
#   4. the proposed models' speed columns (Tables 2 and 4, (A)), fp32 and bf16, channels_last, batch 16, beside the
#      card's bf16 matmul rate; the ResNet-34 one's training step again as train.py --compile runs it (benchmark.py),
#   5. our baselines against segmentation_models_pytorch's and timm's on the same weights (bench/peer_smp.py).
# Each step has a time limit (run); the limits add up to 9 minutes. A failing step is named, the others go on.
#
#   bash bench/gpu.sh [RESULTS_DIR] [MIAS_ROOT]   # default: bench-results/ and ../shared/data/mini-mias
#   DRY_RUN=1 bash bench/gpu.sh DIR [MIAS_ROOT]   # every step on the CPU at toy sizes: checks the script itself
#
# Needs a CUDA GPU, the runtime packages, and mini-MIAS with its masks (carry a copy; it is not in the repository);
# the peer step also needs segmentation-models-pytorch and timm (skipped, saying so, without them).
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench-results}
mias=${2:-${MIAS_ROOT:-../shared/data/mini-mias}}
mkdir -p "$results"
export PYTHONUNBUFFERED=1
status=0
run() {  # run a step under a time limit, keep its output, and remember a failure without stopping the others
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$results/$name.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || { echo "!! $name failed"; status=1; }
}

if [[ "${DRY_RUN:-0}" == 1 ]]; then  # the same steps, on the CPU, one small model and toy sizes
  device=cpu; batch=1; amp=(none); timing=(--warmup 0 --repeats 1); rows=("Table 2 (B)")
  peer=(--size 64 --rounds 1 --repeats 1 --models resnet34)
  pipeline=(--images 2 --backends eager --narrow --scan-size 256 --image-size 64)
  profile=(--batch-size 1 --steps 1 --image-size 64 --narrow)
  compiled=false
else
  device=cuda; batch=16; amp=(none bf16); timing=(--warmup 10 --repeats 20); rows=("Table 2 (A)" "Table 4 (A)")
  peer=(--rounds 5 --repeats 20); pipeline=(--images 48 --amp bf16); profile=(--amp bf16 --batch-size 16)
  compiled=true
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$results/gpu.txt"
fi
run crossval_mias 300 bash bench/crossval_mias.sh "$results/crossval-mias" "$mias"
run pipeline 40 python bench/pipeline.py --device "$device" "${pipeline[@]}" --json "$results/pipeline.json"
run profile_eager 35 python bench/profile_step.py --device "$device" "${profile[@]}"
run speed 70 python benchmark.py --speed --device "$device" --channels-last --batch-size "$batch" --amp "${amp[@]}" \
  "${timing[@]}" --models "${rows[@]}" --json "$results/speed.json"
if python -c "import segmentation_models_pytorch, timm" 2>/dev/null; then
  run peer 35 python bench/peer_smp.py --device "$device" --batch-size "$batch" "${peer[@]}" --json "$results/peer.json"
else
  echo "segmentation_models_pytorch or timm is not installed: peer comparison skipped" | tee "$results/peer.txt"
fi
if [[ "$compiled" == true ]]; then  # compiling is slow: one model, bf16, last (a cut loses this row only)
  run speed_compiled 60 python benchmark.py --speed --device cuda --channels-last --compile --batch-size "$batch" \
    --amp bf16 "${timing[@]}" --models "Table 2 (A)" --json "$results/speed_compiled.json"
fi
exit $status
