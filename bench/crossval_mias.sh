#!/usr/bin/env bash
# Table 2 on real mammograms, with error bars: 5-fold cross-validation by patient on mini-MIAS with its pixel outlines,
# Table 1's CBIS-DDSM recipe for 150 epochs on one GPU, bf16, all runs of a protocol at once. The encoder starts from
# scratch (Table 3's row B) because the GPU machine cannot download weights; WEIGHTS=imagenet-timm where it can.
#   PROTOCOL=whole (default): the thesis' protocol, the three decoders of Table 2 on the whole image at 256x256.
#   PROTOCOL=patches: the best of them at 256x256, Unet, at 1024 trained on 256 patches, validated by sliding
#                     windows every 5 epochs and at the last (docs/high-resolution.md).
#
#   bash bench/crossval_mias.sh RESULTS_DIR [MIAS_ROOT]   # default root: ../shared/data/mini-mias
#   DRY_RUN=1 bash bench/crossval_mias.sh DIR             # the same command on the CPU at toy sizes
#   COPY_ONLY=1 bash bench/crossval_mias.sh DIR           # copy what the runs in $CV_RUNS wrote, again
#
# The runs go to $CV_RUNS/$PROTOCOL (default: a temporary folder); RESULTS_DIR gets summary.json, summary.png, and each run's
# log.jsonl, final.json and train.log.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench-results/crossval-mias}
mias=${2:-${MIAS_ROOT:-../shared/data/mini-mias}}
runs=${CV_RUNS:-$(mktemp -d)}/${PROTOCOL:-whole}  # one folder of runs per protocol
mkdir -p "$results"
copy_results() {  # the summary and the small files of every run, for the record
  cp "$runs"/summary.json "$runs"/summary.png "$results"/ 2>/dev/null
  for folder in "$runs"/*/fold*; do
    target="$results/$(basename "$(dirname "$folder")")/$(basename "$folder")"
    mkdir -p "$target" && cp "$folder"/log.jsonl "$folder"/final.json "$folder"/train.log "$target"/ 2>/dev/null
  done
}
if [[ "${COPY_ONLY:-0}" == 1 ]]; then copy_results; exit 0; fi
if [[ ! -f "$mias/Info.txt" ]]; then
  echo "crossval_mias.sh: no mini-MIAS at $mias (Info.txt, images/, masks/); pass its folder" >&2
  exit 2
fi
if [[ "${PROTOCOL:-whole}" == patches ]]; then
  decoders=(unet); jobs=5; sizes=(--image-size 1024 --patch-size 256 --val-every 5 --eval-batch-size 32)
  dry_sizes=(--image-size 64 --patch-size 32 --val-every 1)
else
  decoders=(fusion unet unetplusplus); jobs=15; sizes=(); dry_sizes=(--image-size 32)
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then  # on the CPU: the first decoder, 2 folds, 1 epoch, toy sizes, 8 images
  flags=(--folds 2 --jobs 2 --decoders "${decoders[0]}" -- --device cpu --epochs 1 "${dry_sizes[@]}"
         --batch-size 4 --limit 8 --workers 0 --decoder-channels 16,16,16,16,16 --weights none --panels 0)
else
  flags=(--folds 5 --jobs "$jobs" --decoders "${decoders[@]}" -- --device cuda --amp bf16 "${sizes[@]}"
         --weights "${WEIGHTS:-none}" --workers 1 --panels 2)  # 1: up to 15 runs at once share the cores
fi
# Stopped (Ctrl-C, a hang-up, or gpu.sh's time limit signalling the whole process group), crossval.py stops its runs,
# which save, and writes the summary of what was done; this script waits for that, then copies the files as usual: the
# tee and the shell itself outlive the signal.
trap 'echo "crossval_mias.sh: stopped; copying what was done"' INT TERM HUP
python crossval.py --dataset mias --data-root "$mias" --out-dir "$runs" "${flags[@]}" \
  --cache-dir "$runs/cache" 2>&1 | (trap '' INT TERM HUP; exec tee "$results/crossval.txt")
status=${PIPESTATUS[0]}
copy_results
exit "$status"
