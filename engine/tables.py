"""The printed tables of evaluate.py (thesis Tables 2-4): each model's metrics, the comparison in
the thesis' columns, the lesion table with the FROC's points, and the images the models disagree
on most. docs/metrics.md says which Dice each column is.

    print_table(rows, binary=True, input_shape=(1, 3, 256, 256), device="cpu", runs=10)
"""
from __future__ import annotations

import math

import numpy as np

from metrics import FROC_RATES
from readers.voc import VOC_CLASSES


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _number(value: float, scale: float = 1, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{scale * value:.{digits}f}"


def _has_lesion_free_images(summary: dict) -> bool:
    return summary["images_with_lesion"] < summary["images"] - summary["images_all_ignored"]


def print_metrics(candidate, summary: dict) -> None:
    """Every number of one model (evaluate.Candidate) the JSON holds; IoU per class if K > 1."""
    epoch = candidate.checkpoint.get("epoch")
    print(f"== {candidate.name}: {candidate.architecture}, {candidate.path}"
          f"{'' if epoch is None else f', epoch {epoch}'}, {int(summary['images'])} images")
    if "dice_pooled" in summary:
        print(f"  IoU  pooled {_percent(summary['iou_pooled'])}, mean per image "
              f"{_percent(summary['iou_mean_per_image'])}")
        print(f"  Dice pooled {_percent(summary['dice_pooled'])}, mean per image "
              f"{_percent(summary['dice_mean_per_image'])}")
        if _has_lesion_free_images(summary):
            print(f"  over the {int(summary['images_with_lesion'])} images with a lesion: IoU "
                  f"{_percent(summary['iou_mean_lesion_images'])}, Dice "
                  f"{_percent(summary['dice_mean_lesion_images'])}"
                  " (a lesion-free image predicted empty scores 1 in the means over all)")
        print(f"  sensitivity {_percent(summary['sensitivity'])}, precision "
              f"{_percent(summary['precision'])}, specificity {_percent(summary['specificity'])}, "
              f"predicted foreground {_percent(summary['predicted_foreground_fraction'])} of the "
              "pixels")
        print_lesions(summary)
        return
    print(f"  mIoU {_percent(summary['mean_iou'])}, mean Dice {_percent(summary['mean_dice'])}, "
          f"pixel accuracy {_percent(summary['pixel_accuracy'])} (mean over the classes present "
          "in the targets or predictions)")
    num_classes = candidate.model.config["num_classes"]
    names = VOC_CLASSES if num_classes == len(VOC_CLASSES) else None
    per_class = [f"{names[c] if names else c} {_percent(summary[f'iou_{c}'])}"
                 for c in range(num_classes)]
    for start in range(0, len(per_class), 6):
        print(("  IoU per class: " if start == 0 else "                 ")
              + ", ".join(per_class[start:start + 6]))


def print_lesions(summary: dict) -> None:
    """Lesions found, false positives per image (all images, normal ones) and the FROC's points."""
    normal = int(summary["normal_images"])
    on_normal = f", {_number(summary['false_positives_per_normal_image'])} per normal image"
    print(f"  lesions found {int(summary['lesions_found'])} of {int(summary['lesions'])} "
          f"({_percent(summary['lesion_sensitivity'])}); false positives "
          f"{_number(summary['false_positives_per_image'])} per image"
          f"{on_normal if normal else ''} ({normal} normal images)")
    points = [f"{_percent(summary[f'lesion_sensitivity_at_{rate:g}_fp_per_image'])} at {rate:g}"
              for rate in FROC_RATES]
    print(f"  FROC: lesions found {', '.join(points)} false positives per image")


def print_columns(header: list[str], body: list[list[str]]) -> None:
    """A table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(line[i])) for line in [header] + body) for i in range(len(header))]
    for line in [header] + body:
        print("  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))))


def print_table(rows: list[dict], *, binary: bool, input_shape: tuple, device: str, runs: int,
                original_sizes: bool = False) -> None:
    """Tables 2 and 4: IoU, Dice (or mIoU), #Params, FLOPS, inference time; then, for binary
    models, lesions found, false positives per image and the FROC's points."""
    lesion_free = binary and _has_lesion_free_images(rows[0])  # the same images for every row
    scores = {"mIoU (%)": "mean_iou"}
    if binary:  # Table 2's statistic: the mean over the images with a lesion (all have one)
        scores = {"IoU, lesion images (%)": "iou_mean_lesion_images",
                  "Dice, lesion images (%)": "dice_mean_lesion_images",
                  **({"Dice, all images (%)": "dice_mean_per_image"} if lesion_free else {}),
                  "IoU pooled (%)": "iou_pooled", "Dice pooled (%)": "dice_pooled"}
    names = [f"{r['name']}: {r['architecture']}" for r in rows]
    print_columns(["Architecture", *scores, "#Params", "FLOPS", "Inference time (s)"],
                  [[name, *[_number(r[key], 100) for key in scores.values()],
                    f"{r['params'] / 1e6:.2f} M", f"{r['thesis_flops_g']:.3f}",
                    _number(r["inference_s"], 1, 4)] for name, r in zip(names, rows)])
    scored = f"mIoU at the {'original sizes' if original_sizes else 'input size'}"
    if binary:
        every = "all images: over every image, a lesion-free one predicted empty scoring 1; "
        scored = (f"lesion images: means over the {int(rows[0]['images_with_lesion'])} images "
                  f"with a lesion (the thesis' Tables 2-3); {every if lesion_free else ''}"
                  "pooled: over all pixels")
    print(f"{scored}. FLOPS in the thesis' convention: GFLOPs / 4 (benchmark.py) for one "
          f"{'x'.join(map(str, input_shape))} input; inference time = median of {runs} forward "
          f"passes at batch 1 on {device}, as prediction runs the model (engine/backends.py), "
          "after warm-up, without --tta.")
    if not binary:
        return
    normal = {"FP / normal image": ("false_positives_per_normal_image", 1)} if lesion_free else {}
    lesions = {"lesions found (%)": ("lesion_sensitivity", 100),
               "FP / image": ("false_positives_per_image", 1), **normal,
               **{f"found at {rate:g} FP / image (%)":
                  (f"lesion_sensitivity_at_{rate:g}_fp_per_image", 100) for rate in FROC_RATES}}
    print()
    print_columns(["Architecture", *lesions],
                  [[name, *[_number(r[key], scale) for key, scale in lesions.values()]]
                   for name, r in zip(names, rows)])
    print(f"A lesion (a connected region of the mask) is found by a mark (one of the prediction) "
          f"with IoU >= {rows[0]['lesion_min_iou']:g}; a mark that finds none is a false positive "
          "(FP). Found at x FP / image: the FROC's best sensitivity with at most x FP per image.")


def disagreements(ids: list[str], names: list[str], scores: np.ndarray, count: int) -> list[dict]:
    """The images with the largest spread (> 0) of the per-image score between models (no NaN)."""
    index = np.flatnonzero(~np.isnan(scores).any(axis=0))
    spread = np.ptp(scores[:, index], axis=0)
    largest = sorted(zip(index.tolist(), spread.tolist()), key=lambda pair: -pair[1])[:count]
    return [dict(id=ids[i], spread=float(s),
                 scores={n: float(v) for n, v in zip(names, scores[:, i])})
            for i, s in largest if s > 0]


def print_disagreements(cases: list[dict], *, binary: bool) -> None:
    """The images of disagreements(), each with every model's score and the spread."""
    if not cases:
        return
    score = "Dice" if binary else "mIoU"
    print(f"\nImages on which the models disagree most (per-image {score}, %):")
    for case in cases:
        print(f"  {case['id']}: "
              + ", ".join(f"{n} {_percent(s)}" for n, s in case["scores"].items())
              + f"; spread {100 * case['spread']:.2f} points")
