"""Evaluation and prediction (thesis §5-6): the numbers of Tables 2-4, panels like Figs. 7-11, masks for new scans.

    python evaluate.py --checkpoint best.pt --dataset cbis --data-root DIR                 # Table 2-3 numbers (val)
    python evaluate.py --checkpoint best.pt --dataset cbis --data-root DIR --split test    # the held-out test CSV
    python evaluate.py --checkpoint A.pt B.pt C.pt --dataset cbis --data-root DIR --panels figs/  # Table 2, Fig. 7-9
    python evaluate.py --checkpoint voc.pt --dataset voc --data-root DIR                    # Table 4 (mIoU)
    python evaluate.py --checkpoint best.pt --input scans/ --output masks/ --tta           # your own images

The metrics live in metrics.py (re-exported here), inference, panels and image files in predict.py. The model is
always rebuilt from the checkpoint's model_config: there are no architecture flags.

The command (one or more --checkpoint, then one mode):
  * --dataset: metrics on a split. Binary sets (cbis, mias, synthetic) are scored at the model's input size, on the
    preprocessed masks the model was trained on. VOC is scored at each image's original resolution, as the VOC
    benchmark does: the logits of the letterboxed input are cropped to the image's area, resized back (bilinear)
    and compared with the original label PNG. Several checkpoints run on the same batches and are compared in one
    table in the thesis' format (IoU, Dice or mIoU, #Params, FLOPS, inference time), followed by the images on which
    they disagree most. --panels DIR writes Fig. 7-11 style panels (write_panel) of "disagreement", "hard" and
    "ordinary" cases (pick_cases). --json FILE writes every number, per-image scores included.
  * --input FILE_OR_DIR --output DIR: prediction on DICOM, PNG, JPEG and PGM files. Each image is prepared like the
    model's training data: a binary (mammogram) model gets data.py's mammogram preprocessing (resized to the input
    size, intensities stretched between the 0.5th and 99.5th percentiles, mirrored so the breast faces left, and the
    prediction mirrored back); a multiclass (VOC) model gets VOC's letterbox. The logits are resized back to the
    original size. An RGB file given to a 1-channel model becomes its luminance (ITU-R 601, PIL's "L"); a gray file
    given to an RGB model is repeated over the three channels. Written per image, at its original size:
    <stem>_mask.png (binary: 0/255; multiclass: a VOC palette PNG whose pixel values are class indices),
    <stem>_prob.png (binary: lesion probability x 255; multiclass: the winning class's probability x 255) and
    <stem>_overlay.png (the mask's outline on the image, gray levels stretched for display). One line per image
    gives the predicted area (pixels, % of the image, mm^2 when the DICOM has PixelSpacing or ImagerPixelSpacing)
    and the largest probability, so an "all black" mask is obvious. A file that cannot be read is reported in one
    line and the others go on; the exit code is then 1.
  --tta (both modes) averages the probabilities of each image and its mirror image (model_logits).
Errors in the flags, a checkpoint or a dataset end in one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmark import count_flops, count_parameters, resolve_device
from checkpoints import CheckpointError, load_checkpoint  # noqa: F401 load_checkpoint re-exported
from data import DataError, build_dataset, error_line
from metrics import BinaryStats, ConfusionMatrix, build_metrics, predict_labels  # noqa: F401 re-exported: DESIGN.md's names
from predict import (IMAGE_SUFFIXES, find_inputs, inference_seconds, predict_dataset_batch, predict_image,
                     read_image_file, write_panel, write_prediction)


# =====================================================================================================================
# The command. Below: checkpoints, panels, inference, evaluation on a dataset, comparison, prediction on files, CLI.

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# Input side when neither --image-size nor the checkpoint's args give one: Table 1 for cbis and voc, cbis' for mias,
# the demo's (train.py's synthetic preset) for synthetic.
DEFAULT_IMAGE_SIZE = {"cbis": 256, "mias": 256, "synthetic": 64, "voc": 384}
PANELS_PER_KIND = 3  # Fig. 7-9 show two or three cases each
DISAGREEMENTS_LISTED = 5
HEAVY_ENTRIES = ("model", "optimizer", "scheduler", "scaler", "rng")  # checkpoint entries the command never reads


class UsageError(Exception):
    """Flags that do not fit together; the message names the flag."""


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on a dataset, comparison of several models, panels

@dataclass
class Candidate:
    """One checkpoint under evaluation."""
    path: str
    name: str
    model: torch.nn.Module
    checkpoint: dict

    @property
    def architecture(self) -> str:
        return f"{self.model.config['encoder']} + {self.model.config['decoder']}"


def read_voc_label(path: str | os.PathLike) -> np.ndarray:
    """A VOC palette PNG as (H, W) int64 class indices (255 = ignore); data.py has checked its values."""
    with Image.open(path) as label:
        return np.asarray(label, dtype=np.int64)


def evaluate_dataset(candidates: list[Candidate], dataset, voc_labels: list | None, *, batch_size: int,
                     workers: int, tta: bool, amp: str) -> tuple[list, np.ndarray]:
    """Every model on the same batches, every image once -> (metrics per model, per-image scores (M, N)).

    The per-image score is Dice for binary models (the empty-mask convention of BinaryStats) and mIoU at the
    original size for VOC (one image's ConfusionMatrix). voc_labels: the original label files, or None for sets
    scored at the input size.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)  # no drop_last
    metrics = [build_metrics(c.model.config["num_classes"]) for c in candidates]
    voc_scores: list[list[float]] = [[] for _ in candidates]
    seen = 0
    for images, masks in loader:  # images (B, C, H, W) in [0, 1]: the dataset does not normalise
        targets = None if voc_labels is None else [read_voc_label(voc_labels[seen + j]) for j in range(len(images))]
        for candidate, metric, scores in zip(candidates, metrics, voc_scores):
            if targets is None:
                labels = predict_dataset_batch(candidate.model, images, None, tta=tta, amp=amp)
                metric.update(labels, masks.to(labels.device))
                continue
            labels = predict_dataset_batch(candidate.model, images, [t.shape for t in targets], tta=tta, amp=amp)
            for pred, target in zip(labels, targets):
                target = torch.from_numpy(target).to(pred.device)[None]  # (1, h, w)
                metric.update(pred[None], target)
                single = ConfusionMatrix(metric.num_classes)
                single.update(pred[None], target)
                scores.append(single.mean_iou())
        seen += len(images)
    if seen != len(dataset):
        raise RuntimeError(f"evaluated {seen} images of {len(dataset)}")
    if voc_labels is None:
        return metrics, np.stack([m.per_image()[0].numpy() for m in metrics])
    return metrics, np.asarray(voc_scores, dtype=np.float64)


def pick_cases(scores: np.ndarray, per_kind: int = PANELS_PER_KIND) -> list[tuple[str, int]]:
    """(kind, image index) for panels, each image once: "disagreement", the largest spread of the per-image score
    between models (Fig. 9; needs two models), "hard", the lowest mean score (Fig. 8), and "ordinary", the mean score
    nearest the median (Fig. 7). scores: (M, N); images with a NaN score are left out."""
    index = np.flatnonzero(~np.isnan(scores).any(axis=0))
    if index.size == 0:
        return []
    mean, spread = scores[:, index].mean(axis=0), np.ptp(scores[:, index], axis=0)
    orders = [("hard", np.argsort(mean, kind="stable")),
              ("ordinary", np.argsort(np.abs(mean - np.median(mean)), kind="stable"))]
    if len(scores) > 1:  # images on which all models score the same are no disagreement
        orders.insert(0, ("disagreement", [i for i in np.argsort(-spread, kind="stable") if spread[i] > 0]))
    cases, used = [], set()
    for kind, order in orders:
        picked = [int(index[i]) for i in order if int(index[i]) not in used][:per_kind]
        used.update(picked)
        cases += [(kind, i) for i in picked]
    return cases


def write_panels(folder: Path, cases: list[tuple[str, int]], candidates: list[Candidate], dataset,
                 voc: tuple[list, list] | None, *, tta: bool, amp: str) -> list[str]:
    """One panel per case, named <kind>-<rank>-<image id>.png; voc = (image files, label files) or None."""
    files, ranks = [], Counter()
    num_classes = candidates[0].model.config["num_classes"]
    for kind, index in cases:
        image, mask = dataset[index]  # (C, H, W) in [0, 1], (H, W)
        batch = image[None]  # (1, C, H, W)
        if voc is None:
            shown = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()  # (H, W[, 3])
            target, sizes = mask.numpy(), None
        else:
            with Image.open(voc[0][index]) as original:
                shown = np.asarray(original.convert("RGB"), dtype=np.float32) / 255  # (h, w, 3) original size
            target = read_voc_label(voc[1][index])
            sizes = [target.shape]
        predictions = [(c.name, predict_dataset_batch(c.model, batch, sizes, tta=tta, amp=amp)[0].cpu().numpy())
                       for c in candidates]
        ranks[kind] += 1
        safe_id = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.ids[index])
        path = folder / f"{kind}-{ranks[kind]}-{safe_id}.png"
        write_panel(path, shown, target, predictions, num_classes)
        files.append(str(path))
    return files


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def print_metrics(candidate: Candidate, summary: dict) -> None:
    """The metrics of one model, every number the JSON holds (per-class IoU for multiclass)."""
    epoch = candidate.checkpoint.get("epoch")
    print(f"== {candidate.name}: {candidate.architecture}, {candidate.path}"
          f"{'' if epoch is None else f', epoch {epoch}'}, {int(summary['images'])} images")
    if "dice_pooled" in summary:
        print(f"  IoU  pooled {_percent(summary['iou_pooled'])}, mean per image "
              f"{_percent(summary['iou_mean_per_image'])}")
        print(f"  Dice pooled {_percent(summary['dice_pooled'])}, mean per image "
              f"{_percent(summary['dice_mean_per_image'])}")
        print(f"  sensitivity {_percent(summary['sensitivity'])}, precision {_percent(summary['precision'])}, "
              f"specificity {_percent(summary['specificity'])}, predicted foreground "
              f"{_percent(summary['predicted_foreground_fraction'])} of the pixels")
        return
    print(f"  mIoU {_percent(summary['mean_iou'])}, mean Dice {_percent(summary['mean_dice'])}, pixel accuracy "
          f"{_percent(summary['pixel_accuracy'])} (mean over the classes present in the targets or predictions)")
    names = VOC_CLASSES if candidate.model.config["num_classes"] == len(VOC_CLASSES) else None
    per_class = [f"{names[c] if names else c} {_percent(summary[f'iou_{c}'])}"
                 for c in range(candidate.model.config["num_classes"])]
    for start in range(0, len(per_class), 6):
        print(("  IoU per class: " if start == 0 else "                 ") + ", ".join(per_class[start:start + 6]))


def print_table(rows: list[dict], *, binary: bool, input_shape: tuple, device: str, runs: int) -> None:
    """Tables 2 and 4 of the thesis: Architecture, IoU, Dice (or mIoU), #Params, FLOPS, inference time."""
    scores = ["IoU (%)", "DICE (%)"] if binary else ["mIoU (%)"]
    header = ["Architecture", *scores, "#Params", "FLOPS", "Inference time (s)"]
    body = [[f"{r['name']}: {r['architecture']}",
             *[("n/a" if r[key] is None or math.isnan(r[key]) else f"{100 * r[key]:.2f}")
               for key in (("iou_pooled", "dice_pooled") if binary else ("mean_iou",))],
             f"{r['params'] / 1e6:.2f} M", f"{r['thesis_flops_g']:.3f}",
             "n/a" if math.isnan(r["inference_s"]) else f"{r['inference_s']:.4f}"] for r in rows]
    widths = [max(len(str(line[i])) for line in [header] + body) for i in range(len(header))]
    for line in [header] + body:
        print("  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))))
    print(f"FLOPS in the thesis' convention: GFLOPs / 4 (benchmark.py) for one {'x'.join(map(str, input_shape))} "
          f"input; {'IoU and DICE pooled over all pixels of the set, ' if binary else 'mIoU at the original sizes, '}"
          f"inference time = median of {runs} forward passes at batch 1 on {device}, after warm-up, without --tta.")


def disagreements(ids: list[str], names: list[str], scores: np.ndarray, count: int) -> list[dict]:
    """The images with the largest spread (> 0) of the per-image score between models (NaN scores left out)."""
    index = np.flatnonzero(~np.isnan(scores).any(axis=0))
    spread = np.ptp(scores[:, index], axis=0)
    largest = sorted(zip(index.tolist(), spread.tolist()), key=lambda pair: -pair[1])[:count]
    return [dict(id=ids[i], spread=float(s), scores={n: float(v) for n, v in zip(names, scores[:, i])})
            for i, s in largest if s > 0]


def predict_files(candidate: Candidate, inputs: list[str], output: Path, size: tuple[int, int], *, tta: bool,
                  amp: str) -> list[dict]:
    """Predict every input, print one line per image (a failed file: one line on stderr), return one record each."""
    found = find_inputs(inputs, output)
    if not found:
        raise UsageError(f"--input {' '.join(inputs)}: no {'/'.join(IMAGE_SUFFIXES)} files found")
    num_classes, records = candidate.model.config["num_classes"], []
    for source, base in found:
        try:
            pixels, is_dicom, spacing = read_image_file(source)
        except DataError as error:
            print(f"FAILED {error_line(error)}", file=sys.stderr)
            records.append(dict(input=str(source), error=error_line(error)))
            continue
        labels, confidence = predict_image(candidate.model, pixels, size, tta=tta, amp=amp)
        paths = write_prediction(base, pixels, labels, confidence, num_classes)
        foreground = int((labels > 0).sum())
        record = dict(input=str(source), **paths, height=labels.shape[0], width=labels.shape[1],
                      foreground_pixels=foreground, foreground_fraction=foreground / labels.size,
                      max_probability=float(confidence.max()) if num_classes == 1 else None, area_mm2=None)
        line = (f"{source}: {labels.shape[1]}x{labels.shape[0]}, {'lesion' if num_classes == 1 else 'foreground'} "
                f"{foreground} px = {100 * record['foreground_fraction']:.2f}% of the image")
        if spacing is not None:
            record["area_mm2"] = foreground * spacing[0] * spacing[1]
            line += f" = {record['area_mm2']:.1f} mm^2 ({spacing[2]} {spacing[0]:g} x {spacing[1]:g} mm)"
        elif is_dicom:
            line += " (no pixel spacing in the DICOM: no mm^2)"
        if num_classes == 1:
            line += f", max probability {record['max_probability']:.3f}"
            line += "; EMPTY mask: no pixel above probability 0.5" if foreground == 0 else ""
        else:
            names = VOC_CLASSES if num_classes == len(VOC_CLASSES) else [str(c) for c in range(num_classes)]
            shares = [f"{names[c]} {100 * (labels == c).mean():.1f}%" for c in np.unique(labels) if c > 0]
            line += "; " + (", ".join(shares) or "background only")
        print(line + f" -> {paths['mask']}")
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------------
# Command line

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block, like train.py
        print(f"evaluate.py: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def get_args_parser() -> argparse.ArgumentParser:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT",
                        help="checkpoint(s) written by train.py; the model is rebuilt from each file alone. Several "
                             "are compared on the same images (--dataset only)")
    parser.add_argument("--dataset", choices=("cbis", "mias", "voc", "synthetic"),
                        help="evaluate on this dataset's --split (metrics, comparison table, --panels)")
    parser.add_argument("--data-root", metavar="DIR", help="dataset folder (see data.py); none for synthetic")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val, the split the thesis "
                        "reports; test = CBIS-DDSM's official test CSV, held out from training and model selection)")
    parser.add_argument("--image-size", type=int, metavar="PIXELS",
                        help="square input side, a multiple of 32 (default: the size the checkpoint was trained at, "
                             "else DEFAULT_IMAGE_SIZE: Table 1's 256 for CBIS-DDSM and mini-MIAS, 384 for VOC, the "
                             "demo's 64 for synthetic)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes (default: 4)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... "
                        "(default: auto)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                        help="autocast dtype for the forward pass; scores are computed in fp32 (default: none)")
    parser.add_argument("--tta", action="store_true",
                        help="average the probabilities of each image and its mirror image: vertical for "
                             "mammogram models, horizontal for VOC ones")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images of the split")
    parser.add_argument("--json", metavar="FILE", help="also write every number (per-image scores too) to FILE")
    parser.add_argument("--panels", metavar="DIR",
                        help=f"write Fig. 7-11 style panels of {PANELS_PER_KIND} disagreement, hard and ordinary "
                             "cases to DIR")
    parser.add_argument("--timing-runs", type=int, default=10, metavar="N",
                        help="forward passes timed for the inference-time column, after warm-up (default: 10; "
                             "0 skips timing)")
    parser.add_argument("--input", nargs="+", metavar="FILE_OR_DIR",
                        help="predict these DICOM/PNG/JPEG/PGM files or folders (searched recursively; DICOM "
                             "files named otherwise, IM0001 or by UID, are found by their DICM marker)")
    parser.add_argument("--output", metavar="DIR", help="where --input's masks, probability maps and overlays go: "
                        "a folder holding no input file, so nothing beside an input is overwritten; a folder input's "
                        "subfolders are kept, and same-named inputs get distinct names (scan_dcm, scan_png, "
                        "scan_png_2)")
    parser.epilog = ("exit codes: 0 done; 1 some --input files could not be read (the others were written); "
                     "2 bad flags, checkpoint or dataset\n")
    return parser


def resolve_image_size(requested: int | None, candidates: list[Candidate], dataset: str | None) -> tuple[int, int]:
    """--image-size, else the size all checkpoints were trained at (their args), else DEFAULT_IMAGE_SIZE."""
    if requested is not None:
        size = (requested, requested)
    else:
        recorded = {}
        for candidate in candidates:
            args = candidate.checkpoint.get("args")
            value = args.get("image_size") if isinstance(args, dict) else None
            if isinstance(value, int):
                recorded[candidate.name] = (value, value)
            elif isinstance(value, (list, tuple)) and len(value) == 2:
                recorded[candidate.name] = (int(value[0]), int(value[1]))
        if len(set(recorded.values())) > 1:
            raise UsageError(f"the checkpoints were trained at different image sizes ({recorded}); pass --image-size "
                             "to evaluate them all at one")
        trained_on = next((c.checkpoint["args"].get("dataset") for c in candidates
                           if isinstance(c.checkpoint.get("args"), dict)), None)
        binary = candidates[0].model.config["num_classes"] == 1
        default = DEFAULT_IMAGE_SIZE.get(dataset or trained_on, 256 if binary else 384)
        size = next(iter(recorded.values()), (default, default))
    if min(size) < 32 or size[0] % 32 or size[1] % 32:
        raise UsageError(f"--image-size {size[0]}x{size[1]}: sides must be positive multiples of 32 (the encoder's "
                         "output stride)")
    return size


def _json_ready(value):
    """NaN -> null (JSON has no NaN), numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_json_ready(payload), indent=2, allow_nan=False) + "\n")


def main(args: argparse.Namespace) -> int:
    """Run the mode the flags ask for; returns the exit code. User errors raise UsageError, CheckpointError or
    DataError (the __main__ block turns them into one line on stderr and exit code 2)."""
    if (args.dataset is None) == (args.input is None):
        raise UsageError("pass --dataset (metrics, comparison, panels) or --input with --output (prediction)")
    if args.input is not None and (args.output is None or len(args.checkpoint) > 1 or args.panels):
        raise UsageError("--input needs --output DIR and exactly one --checkpoint (--panels goes with --dataset)")
    if args.dataset is not None and args.output is not None:
        raise UsageError("--output goes with --input; with --dataset use --json FILE and --panels DIR")
    if args.image_size is not None and (args.image_size < 32 or args.image_size % 32):
        raise UsageError(f"--image-size {args.image_size}: must be a positive multiple of 32 (the encoder's "
                         "output stride)")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                               ("--timing-runs", args.timing_runs, 0), ("--limit", args.limit, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag} {value}: must be at least {least}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    stems = [Path(path).stem for path in args.checkpoint]
    names = stems if len(set(stems)) == len(stems) else list(args.checkpoint)
    candidates = []
    for path, name in zip(args.checkpoint, names):
        model, checkpoint = load_checkpoint(path, device)
        # Keep epoch, args, metrics...; drop the tensors (weights, optimizer state), which can take gigabytes.
        candidates.append(Candidate(path, name, model, {k: v for k, v in checkpoint.items() if k not in HEAVY_ENTRIES}))
    size = resolve_image_size(args.image_size, candidates, args.dataset)

    if args.input is not None:  # prediction on files
        candidate = candidates[0]
        print(f"{candidate.name}: {candidate.architecture}, {candidate.model.config['num_classes']} output(s), "
              f"input {size[0]}x{size[1]} on {device}{', with --tta' if args.tta else ''}")
        records = predict_files(candidate, args.input, Path(args.output), size, tta=args.tta, amp=args.amp)
        failed = sum("error" in r for r in records)
        print(f"{len(records) - failed} image(s) predicted into {args.output}{f', {failed} FAILED' if failed else ''}")
        if args.json:
            write_json(args.json, dict(checkpoint=candidate.path, image_size=list(size), tta=args.tta, files=records))
        return 1 if failed else 0

    # Metrics on a dataset, one pass, every model on the same batches
    classes = {c.model.config["num_classes"] for c in candidates}
    if len(classes) > 1:
        raise UsageError(f"--checkpoint: the models have different numbers of classes ({sorted(classes)}); compare "
                         "models of one task")
    split = args.split
    channels = 3 if args.dataset == "voc" else 1  # raw [0, 1] pixels; each model converts and normalises them
    dataset = build_dataset(args.dataset, args.data_root, split, size, in_channels=channels, mean=(0.0,) * channels,
                            std=(1.0,) * channels, augment=False, limit=args.limit)
    num_classes = classes.pop()
    if dataset.num_classes != num_classes:
        raise UsageError(f"--checkpoint {candidates[0].path}: the model has {num_classes} output(s), --dataset "
                         f"{args.dataset} needs {dataset.num_classes}")
    if len(dataset) == 0:
        raise UsageError(f"--dataset {args.dataset} --split {split}: no images")
    voc = (dataset.images, dataset.labels) if args.dataset == "voc" else None
    print(f"{args.dataset} {split}: {len(dataset)} images, input {size[0]}x{size[1]}, on {device}"
          f"{', with --tta' if args.tta else ''}" + (", scored at the original sizes" if voc else ""))
    metrics, scores = evaluate_dataset(candidates, dataset, None if voc is None else voc[1],
                                       batch_size=args.batch_size, workers=args.workers, tta=args.tta, amp=args.amp)

    example = dataset[0][0][None]  # (1, C, H, W): timing on a real image
    binary, rows = num_classes == 1, []
    for candidate, metric, per_image in zip(candidates, metrics, scores):
        summary = metric.summary()
        print_metrics(candidate, summary)
        flops = count_flops(candidate.model, (1, candidate.model.config["in_channels"], *size))
        rows.append(dict(name=candidate.name, checkpoint=candidate.path, architecture=candidate.architecture,
                         model_config=candidate.model.config, epoch=candidate.checkpoint.get("epoch"), metrics=summary,
                         params=count_parameters(candidate.model), flops=flops, thesis_flops_g=flops / 4 / 1e9,
                         inference_s=inference_seconds(candidate.model, example, amp=args.amp, runs=args.timing_runs),
                         **{f"per_image_{'dice' if binary else 'miou'}": dict(zip(dataset.ids, per_image))}))
    print()
    print_table([dict(r, **r["metrics"]) for r in rows], binary=binary, device=str(device), runs=args.timing_runs,
                input_shape=(1, candidates[0].model.config["in_channels"], *size))
    disagreeing = disagreements(dataset.ids, names, scores, DISAGREEMENTS_LISTED) if len(candidates) > 1 else []
    if disagreeing:
        print(f"\nImages on which the models disagree most (per-image {'Dice' if binary else 'mIoU'}, %):")
        for case in disagreeing:
            print(f"  {case['id']}: " + ", ".join(f"{n} {_percent(s)}" for n, s in case["scores"].items())
                  + f"; spread {100 * case['spread']:.2f} points")
    panels = []
    if args.panels:
        panels = write_panels(Path(args.panels), pick_cases(scores), candidates, dataset, voc, tta=args.tta,
                              amp=args.amp)
        print(f"\n{len(panels)} panels in {args.panels}: " + ", ".join(Path(p).name for p in panels))
    if args.json:
        write_json(args.json, dict(dataset=args.dataset, split=split, images=len(dataset), image_size=list(size),
                                   tta=args.tta, amp=args.amp, device=str(device), models=rows,
                                   disagreements=disagreeing, panels=panels))
    return 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except (UsageError, CheckpointError, DataError) as error:
        print(f"evaluate.py: error: {error_line(error)}", file=sys.stderr)
        sys.exit(2)
