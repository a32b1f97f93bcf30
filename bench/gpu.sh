#!/usr/bin/env bash
# Every GPU measurement the README reports, in one run of about 7 minutes on an H200 (thesis Tables 2 and 4: inference time;
# training throughput; the baseline U-Net against segmentation_models_pytorch; a short AMP training smoke run; the
# proposed model under torch.compile).
#
#   bash bench/gpu.sh [RESULTS_DIR]        # default: bench-results/
#   DRY_RUN=1 bash bench/gpu.sh DIR        # every step on the CPU at toy sizes, in seconds: checks the script itself
#
# Needs a CUDA GPU and the runtime packages (requirements.txt, pydicom included); the peer comparison also needs
# segmentation-models-pytorch (skipped, with a line saying so, when it is not installed).
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench-results}
mkdir -p "$results"
export PYTHONUNBUFFERED=1
status=0
run() {  # run a step, keep its output, and remember a failure without stopping the others
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$results/$name.txt" || { echo "!! $name failed"; status=1; }
}

if [[ "${DRY_RUN:-0}" == 1 ]]; then  # the same steps, on the CPU, one model and toy sizes
  device=cpu; batch=1; amp=(none); timing=(--warmup 0 --repeats 1 --models "Table 2 (B)")
  peer=(--size 64 --rounds 1 --repeats 1); smoke=(--decoder-channels 16,16,16,16,16 --image-size 32 --limit 4 --epochs 1
                                                 --batch-size 2 --workers 0 --panels 1 --amp none)
else
  device=cuda; batch=16; amp=(none bf16); timing=(--warmup 10 --repeats 30)
  peer=(--rounds 5 --repeats 20); smoke=(--decoder-channels 768,384,256,96,48 --image-size 256 --epochs 2
                                         --batch-size 16 --amp bf16)
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$results/gpu.txt"
fi
# Thesis rows: fp32 and bf16, channels_last, batch 1 latency and batch-16 throughput / training step.
run speed python benchmark.py --speed --device "$device" --channels-last --batch-size "$batch" --amp "${amp[@]}" \
  "${timing[@]}" --json "$results/speed.json"
if python -c "import segmentation_models_pytorch" 2>/dev/null; then
  run peer_fp32 python bench/peer_smp.py --device "$device" --batch-size "$batch" "${peer[@]}" \
    --json "$results/peer_fp32.json"
  if [[ "$device" == cuda ]]; then  # bf16 convolutions on a CPU measure nothing a reader needs
    run peer_bf16 python bench/peer_smp.py --device cuda --amp bf16 --batch-size "$batch" "${peer[@]}" \
      --json "$results/peer_bf16.json"
  fi
else
  echo "segmentation_models_pytorch is not installed: peer comparison skipped" | tee "$results/peer.txt"
fi
# AMP training smoke run: the thesis' CBIS model (ResNet-34 + fusion, 256x256) on synthetic data, bf16, 2 epochs.
run train_smoke python train.py --dataset synthetic --encoder resnet34 --decoder fusion --weights none \
  --in-channels 3 --device "$device" --out-dir "$results/train_smoke" "${smoke[@]}"
# torch.compile: compiling takes minutes, so the proposed ResNet-34 model only, bf16, and last, under a time limit.
if [[ "$device" == cuda ]]; then
  run speed_compiled timeout 240 python benchmark.py --speed --device cuda --channels-last --compile \
    --batch-size "$batch" --amp bf16 "${timing[@]}" --models "Table 2 (A)" --json "$results/speed_compiled.json"
fi
exit $status
