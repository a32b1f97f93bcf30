#!/usr/bin/env bash
# Every GPU number the docs report, in one run of at most 9 minutes on an H200, most important first:
#   1. Table 2 on real mammograms: 5-fold cross-validation by patient of the three decoders on mini-MIAS at
#      256x256 (the thesis' protocol), its 15 runs at once, every run to its last epoch (bench/crossval_mias.sh);
#   2. prediction as a user runs it, eager against a CUDA graph per shape (bench/pipeline.py);
#   3. where a training step's time goes, by kind of kernel (bench/profile_step.py);
#   4. the speed columns of Tables 2 and 4 (A), fp32 and bf16, channels_last, batch 16, beside the card's bf16
#      matmul rate (benchmark.py), and the ResNet-34 row again as train.py --compile runs it;
#   5. our baselines against segmentation_models_pytorch's and timm's on the same weights (bench/peer_smp.py);
#   6. with the time left, Unet at 1024 trained on 256 patches and validated by sliding windows
#      (docs/high-resolution.md): last, as its 5 runs beside the 15 would slow every run of step 1 by a third.
# Each step has a time limit sized from the H200 run of 2026-12-04 (bench/results/h200-2026-12-04), cut to what is
# left of the run's budget (BUDGET_S, default 540 s from the start, leaving the caller time to pack the results); a
# step with under 10 s left is skipped. At its limit a step gets SIGTERM, and SIGKILL 30 s later if still running: a
# cut cross-validation stops its runs (each saves its last.pt), writes the summary of the runs that finished and
# keeps every run's log. A failing step is named, the others go on; steps.txt records each step's exit code and
# seconds, and the script exits 1 if any failed.
#
#   bash bench/gpu.sh [RESULTS_DIR] [MIAS_ROOT]   # default: bench-results/ and ../shared/data/mini-mias
#   DRY_RUN=1 bash bench/gpu.sh DIR [MIAS_ROOT]   # every step on the CPU at toy sizes, without time limits
#
# Needs a CUDA GPU, the runtime packages, and mini-MIAS with its masks (carry a copy; it is not in the repository);
# the peer step also needs segmentation-models-pytorch and timm (skipped, saying so, without them).
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench-results}
mias=${2:-${MIAS_ROOT:-../shared/data/mini-mias}}
mkdir -p "$results"
export PYTHONUNBUFFERED=1
# The runs' folders (about 13 GB of checkpoints for the 15 runs, then the 5) in memory where it can: no disk time
export CV_RUNS=${CV_RUNS:-$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)}
status=0
deadline=$((SECONDS + ${BUDGET_S:-540}))
run() {  # a step under its time limit (none in a dry run: a loaded CPU is slow); a failure is remembered
  local name=$1 limit=$2 started=$SECONDS code; shift 2
  local left=$((deadline - SECONDS - 30))  # 30 s: SIGKILL's grace after the SIGTERM
  if [[ "${DRY_RUN:-0}" != 1 ]] && ((left < limit)); then limit=$left; fi
  if ((limit < 10)); then
    echo "!! $name skipped: ${left}s left of the budget" | tee -a "$results/steps.txt"; status=1; return 1
  fi
  echo "== $name (limit ${limit}s): $*"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then "$@"; else timeout --kill-after 30 "$limit" "$@"; fi 2>&1 |
    tee "$results/$name.txt"
  code=${PIPESTATUS[0]}
  echo "$name exit $code after $((SECONDS - started))s (limit ${limit}s)" >> "$results/steps.txt"
  if [[ $code != 0 ]]; then echo "!! $name failed"; status=1; return 1; fi
}

if [[ "${DRY_RUN:-0}" == 1 ]]; then  # the same steps, on the CPU, one small model and toy sizes
  device=cpu; batch=1; amp=(none); timing=(--warmup 0 --repeats 1); rows=("Table 2 (B)")
  peer=(--size 64 --rounds 1 --repeats 1 --models resnet34)
  pipeline=(--images 2 --backends eager --narrow --scan-size 256 --image-size 64)
  profile=(--amp none --batch-size 1 --steps 1 --image-size 64 --narrow)  # bf16 convolutions crawl on a CPU
  compiled=false
else
  device=cuda; batch=16; amp=(none bf16); timing=(--warmup 5 --repeats 10); rows=("Table 2 (A)" "Table 4 (A)")
  peer=(--rounds 3 --repeats 10); pipeline=(--images 24 --amp bf16); profile=(--amp bf16 --batch-size 16)
  compiled=true
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$results/gpu.txt"
fi
# The H200 ran these 15 runs at once, their epochs alone taking 176-333 s per run beside checkpoint writes of every
# epoch, which are gone. 270 s, then 30 s to save and summarise; then the runs' small files are copied again, outside
# the limit (a SIGKILL may have cut the script's own copy).
run crossval_256 270 bash bench/crossval_mias.sh "$results/crossval-mias-256" "$mias"
COPY_ONLY=1 bash bench/crossval_mias.sh "$results/crossval-mias-256"
run pipeline 25 python bench/pipeline.py --device "$device" "${pipeline[@]}" --json "$results/pipeline.json"
run profile_eager 25 python bench/profile_step.py --device "$device" "${profile[@]}"
run speed 90 python benchmark.py --speed --device "$device" --channels-last --batch-size "$batch" --amp "${amp[@]}" \
  "${timing[@]}" --models "${rows[@]}" --json "$results/speed.json"
peers=(segmentation_models_pytorch timm)  # found, not imported: importing them costs seconds
if python -c "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, sys.argv[1:])))" "${peers[@]}"; then
  run peer 30 python bench/peer_smp.py --device "$device" --batch-size "$batch" "${peer[@]}" --json "$results/peer.json"
else
  echo "segmentation_models_pytorch or timm is not installed: peer comparison skipped" | tee "$results/peer.txt"
fi
if [[ "$compiled" == true ]]; then  # compiling is slow: one model, bf16, after the other rows
  run speed_compiled 60 python benchmark.py --speed --device cuda --channels-last --compile --batch-size "$batch" \
    --amp bf16 "${timing[@]}" --models "Table 2 (A)" --json "$results/speed_compiled.json"
fi
PROTOCOL=patches run crossval_1024 270 bash bench/crossval_mias.sh "$results/crossval-mias-1024" "$mias"
PROTOCOL=patches COPY_ONLY=1 bash bench/crossval_mias.sh "$results/crossval-mias-1024"
echo "exit $status" >> "$results/steps.txt"
exit $status
