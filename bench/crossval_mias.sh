#!/usr/bin/env bash
# Table 2 on real mammograms, with error bars: 5-fold cross-validation by patient of the three Table 2 decoders
# (ResNet-34 + fusion, Unet, Unet++) on mini-MIAS with its pixel outlines, Table 1's CBIS-DDSM recipe at 256x256 for
# 150 epochs, on one GPU, five runs at a time. The encoder starts from scratch (Table 3's row B) because the GPU
# machine cannot download weights; WEIGHTS=imagenet-timm (the recipe's, §4.3) where it can.
#
#   bash bench/crossval_mias.sh RESULTS_DIR [MIAS_ROOT]   # default root: ../shared/data/mini-mias
#   DRY_RUN=1 bash bench/crossval_mias.sh DIR             # every step on the CPU at toy sizes: checks the script
#
# The runs (and their checkpoints, about 1 GB each) go to $CV_RUNS (default: a temporary folder); RESULTS_DIR gets
# what a reader needs: summary.json, summary.png, and each run's log.jsonl, final.json and train.log.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench-results/crossval-mias}
mias=${2:-${MIAS_ROOT:-../shared/data/mini-mias}}
runs=${CV_RUNS:-$(mktemp -d)}
mkdir -p "$results"
if [[ ! -f "$mias/Info.txt" ]]; then
  echo "crossval_mias.sh: no mini-MIAS at $mias (Info.txt, images/, masks/); pass its folder" >&2
  exit 2
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then  # the same command on the CPU: two decoders, 2 folds, 1 epoch, 32x32, 8 images
  flags=(--folds 2 --jobs 2 --decoders fusion unet -- --device cpu --epochs 1 --image-size 32 --batch-size 4
         --limit 8 --workers 0 --decoder-channels 16,16,16,16,16 --weights none --panels 0)
else
  flags=(--folds 5 --jobs 5 -- --device cuda --amp bf16 --weights "${WEIGHTS:-none}" --workers 2 --panels 2)
fi
python crossval.py --dataset mias --data-root "$mias" --out-dir "$runs" "${flags[@]}" \
  --cache-dir "$runs/cache" 2>&1 | tee "$results/crossval.txt"
status=${PIPESTATUS[0]}
cp "$runs"/summary.json "$runs"/summary.png "$results"/ 2>/dev/null
for folder in "$runs"/*/fold*; do  # the small files of every run, for the record
  target="$results/$(basename "$(dirname "$folder")")/$(basename "$folder")"
  mkdir -p "$target" && cp "$folder"/log.jsonl "$folder"/final.json "$folder"/train.log "$target"/ 2>/dev/null
done
exit "$status"
