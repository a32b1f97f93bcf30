"""Evaluation (thesis §5-6): the numbers of Tables 2-4 from trained checkpoints, Figs. 7-11, FROC.

    python evaluate.py --checkpoint best.pt --dataset cbis --data-root DIR     # Tables 2-3 (val)
    python evaluate.py --checkpoint best.pt --dataset cbis --data-root DIR --split test
    python evaluate.py --checkpoint A.pt B.pt --dataset mias --data-root DIR --froc froc.png
    python evaluate.py --checkpoint voc.pt --dataset voc --data-root DIR        # Table 4 (mIoU)
    python evaluate.py --checkpoint best.pt --input scans/ --output masks/     # = predict.py

Each model is rebuilt from its checkpoint (no architecture flags); several run on the same batches
and are compared in one table. Binary sets are scored at the model's input size: Dice and IoU as
means over images (Tables 2-3) and pooled, lesions found and false positives per image, the FROC
(--froc draws it). VOC is scored at each image's original size, as its benchmark: the logits of the
letterboxed input cropped to the image and resized back. Then the images the models disagree on
most, --panels (Fig. 7-11 style), --json (every number); --tta averages an image and its mirror.
Exit codes: 0 done; 1 some --input files failed (the others were written); 2 bad flags or files.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from engine.checkpoints import CheckpointError, load_checkpoint
from data import DataError, build_dataset, cache_folder, prepare_datasets
from engine.charts import PALETTE, draw_froc
from engine.inference import (image_size_for, inference_seconds, overlap_for, predict_dataset_batch,
                              sliding_window_logits, window_for)
from engine.windows import window_count
from engine.scans import run_prediction
from metrics import FROC_RATES, ConfusionMatrix, LesionStats, build_metrics, predict_labels
from engine.panels import write_panel
from recipes import PRESETS
from engine.backends import BACKENDS, fast_model
from engine.devices import AMP_DTYPES, default_workers, resolve_device
from engine.cli import ArgumentParser, UsageError, check_writable_file, run_command
from engine.measure import count_flops, count_parameters
from readers.atomic import write_json
from readers.voc import VOC_CLASSES, read_voc_label

PANELS_PER_KIND = 3  # Fig. 7-9 show two or three cases each
DISAGREEMENTS_LISTED = 5
HEAVY_ENTRIES = ("model", "optimizer", "scheduler", "scaler", "rng")  # checkpoint entries the command never reads


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on a dataset, comparison of several models, panels

@dataclass
class Candidate:
    """One checkpoint under evaluation: its model, and the runner that predicts with it (runners.fast_model)."""
    path: str
    name: str
    model: torch.nn.Module
    checkpoint: dict
    runner: torch.nn.Module | None = None
    window: tuple[int, int] | None = None  # windows of its training patch, or None: whole images
    overlap: float = 0.5

    @property
    def architecture(self) -> str:
        return f"{self.model.config['encoder']} + {self.model.config['decoder']}"


def evaluate_dataset(candidates: list[Candidate], dataset, voc_labels: list | None, *, batch_size: int,
                     workers: int, tta: bool, amp: str) -> tuple[list, list, np.ndarray]:
    """Every model on the same batches, every image once -> (metrics per model, LesionStats per
    model (None for multiclass), per-image scores (M, N)).

    The per-image score is Dice for binary models (the empty-mask convention of BinaryStats) and the image's own mIoU
    for multiclass ones (one image's ConfusionMatrix): at the original size for VOC, at the input size for a folder
    of class-index masks. voc_labels: VOC's original label files, or None for sets scored at the input size (the
    mammography sets, whose models are prepared and flipped as mammograms).
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)  # no drop_last
    metrics = [build_metrics(c.model.config["num_classes"]) for c in candidates]
    lesions = [LesionStats() if c.model.config["num_classes"] == 1 else None for c in candidates]
    class_scores: list[list[float]] = [[] for _ in candidates]
    seen = 0
    for images, masks in loader:  # images (B, C, H, W) in [0, 1]: the dataset does not normalise
        targets = None if voc_labels is None else [read_voc_label(voc_labels[seen + j]).astype(np.int64)
                                               for j in range(len(images))]
        for candidate, metric, lesion, scores in zip(candidates, metrics, lesions, class_scores):
            if targets is None:
                logits = sliding_window_logits(candidate.runner, images, candidate.window,
                                               overlap=candidate.overlap, batch_size=len(images),
                                               tta=tta, amp=amp, mammogram=True)
                labels = predict_labels(logits)
                targets_here = masks.to(labels.device)  # (B, H, W)
                metric.update(labels, targets_here)
                if lesion is not None:
                    lesion.update(logits, targets_here)
                if isinstance(metric, ConfusionMatrix):
                    scores.extend(image_miou(pred, target, metric.num_classes)
                                  for pred, target in zip(labels, targets_here))
                continue
            labels = predict_dataset_batch(candidate.runner, images, [t.shape for t in targets], tta=tta,
                                            amp=amp, mammogram=False)
            for pred, target in zip(labels, targets):
                target = torch.from_numpy(target).to(pred.device)  # (h, w)
                metric.update(pred[None], target[None])
                scores.append(image_miou(pred, target, metric.num_classes))
        seen += len(images)
    if seen != len(dataset):
        raise RuntimeError(f"evaluated {seen} images of {len(dataset)}")
    if isinstance(metrics[0], ConfusionMatrix):
        return metrics, lesions, np.asarray(class_scores, dtype=np.float64)
    return metrics, lesions, np.stack([m.per_image()[0].numpy() for m in metrics])


def image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """One image's mIoU (H, W) label maps, over the classes present in its target or prediction."""
    single = ConfusionMatrix(num_classes)
    single.update(pred[None], target[None])
    return single.mean_iou()


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
            target = read_voc_label(voc[1][index]).astype(np.int64)
            sizes = [target.shape]
        predictions = [(c.name, predict_dataset_batch(c.runner, batch, sizes, tta=tta, amp=amp,
                                                      mammogram=voc is None, window=c.window,
                                                      overlap=c.overlap)[0].cpu().numpy())
                       for c in candidates]
        ranks[kind] += 1
        safe_id = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.ids[index])
        path = folder / f"{kind}-{ranks[kind]}-{safe_id}.png"
        write_panel(path, shown, target, predictions, num_classes)
        files.append(str(path))
    return files


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _number(value: float, scale: float = 1, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{scale * value:.{digits}f}"


def _has_lesion_free_images(summary: dict) -> bool:
    return summary["images_with_lesion"] < summary["images"] - summary["images_all_ignored"]


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
        if _has_lesion_free_images(summary):
            print(f"  over the {int(summary['images_with_lesion'])} images with a lesion: IoU "
                  f"{_percent(summary['iou_mean_lesion_images'])}, Dice {_percent(summary['dice_mean_lesion_images'])}"
                  " (a lesion-free image predicted empty scores 1 in the means over all)")
        print(f"  sensitivity {_percent(summary['sensitivity'])}, precision {_percent(summary['precision'])}, "
              f"specificity {_percent(summary['specificity'])}, predicted foreground "
              f"{_percent(summary['predicted_foreground_fraction'])} of the pixels")
        print_lesions(summary)
        return
    print(f"  mIoU {_percent(summary['mean_iou'])}, mean Dice {_percent(summary['mean_dice'])}, pixel accuracy "
          f"{_percent(summary['pixel_accuracy'])} (mean over the classes present in the targets or predictions)")
    names = VOC_CLASSES if candidate.model.config["num_classes"] == len(VOC_CLASSES) else None
    per_class = [f"{names[c] if names else c} {_percent(summary[f'iou_{c}'])}"
                 for c in range(candidate.model.config["num_classes"])]
    for start in range(0, len(per_class), 6):
        print(("  IoU per class: " if start == 0 else "                 ") + ", ".join(per_class[start:start + 6]))


def print_lesions(summary: dict) -> None:
    """Lesions found, false positives per image (all images, normal ones) and the FROC's points."""
    normal = int(summary["normal_images"])
    on_normal = f", {_number(summary['false_positives_per_normal_image'])} per normal image"
    print(f"  lesions found {int(summary['lesions_found'])} of {int(summary['lesions'])} "
          f"({_percent(summary['lesion_sensitivity'])}); false positives "
          f"{_number(summary['false_positives_per_image'])} per image{on_normal if normal else ''}"
          f" ({normal} normal images)")
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
    """Tables 2 and 4 of the thesis: Architecture, IoU, Dice (or mIoU), #Params, FLOPS, inference
    time; for binary models then lesions found, false positives per image and FROC points."""
    lesion_free = binary and _has_lesion_free_images(rows[0])  # the same images for every row
    scores = {"mIoU (%)": "mean_iou"}
    if binary:  # Table 2's statistic: the mean over the images with a lesion (all of them have one)
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
          f"{'x'.join(map(str, input_shape))} input; inference time = median of {runs} forward passes at batch 1 on "
          f"{device}, as prediction runs the model (runners.py), after warm-up, without --tta.")
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
    """The images with the largest spread (> 0) of the per-image score between models (NaN scores left out)."""
    index = np.flatnonzero(~np.isnan(scores).any(axis=0))
    spread = np.ptp(scores[:, index], axis=0)
    largest = sorted(zip(index.tolist(), spread.tolist()), key=lambda pair: -pair[1])[:count]
    return [dict(id=ids[i], spread=float(s), scores={n: float(v) for n, v in zip(names, scores[:, i])})
            for i, s in largest if s > 0]


# ---------------------------------------------------------------------------------------------------------------------
# The command

def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="evaluate.py", description=__doc__)
    add = parser.add_argument
    add("--checkpoint", nargs="+", required=True, metavar="CKPT", help="checkpoint(s) written by train.py; several "
        "are compared on the same images (--dataset only)")
    add("--dataset", choices=list(PRESETS),
        help="evaluate on this dataset's --split (metrics, comparison table, --panels)")
    add("--data-root", metavar="DIR", help="dataset folder (see data.py); none for synthetic")
    add("--cache-dir", metavar="DIR", help="folder for the preprocessed mammograms (default: $UNET_FUSION_CACHE, "
        "else ~/.cache/unet-fusion/<dataset>-<hash>)")
    add("--split", default="val", help="split to evaluate (default: val, the split the thesis reports; test = "
        "CBIS-DDSM's official test CSV, held out from training and model selection)")
    add("--image-size", type=int, metavar="PIXELS", help="square input side, a multiple of 32 (default: the size the "
        "checkpoints were trained at, else Table 1's for the dataset: recipes.PRESETS)")
    add("--batch-size", type=int, default=8, help="images or windows per forward pass (default: 8)")
    add("--overlap", type=float, metavar="SHARE", help="overlap of the sliding windows of a model "
        "trained on patches, in [0, 1) (default: the checkpoint's)")
    add("--workers", type=int, default=default_workers(), help="DataLoader worker processes (default: the machine's "
        f"cores, at most 4: {default_workers()} here)")
    add("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N (default: auto)")
    add("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype of the forward pass; scores are "
        "computed in fp32 (default: none)")
    add("--tta", action="store_true", help="average the probabilities of each image and its mirror image: vertical "
        "for mammogram models, horizontal for VOC ones")
    add("--limit", type=int, metavar="N", help="evaluate only the first N images of the split")
    add("--json", metavar="FILE", help="also write every number (per-image scores too) to FILE")
    add("--panels", metavar="DIR", help=f"write Fig. 7-11 style panels of {PANELS_PER_KIND} disagreement, hard and "
        "ordinary cases to DIR")
    add("--froc", metavar="FILE.png", help="draw the FROC curves of the checkpoints to FILE.png")
    add("--timing-runs", type=int, default=10, metavar="N", help="forward passes timed for the inference-time column, "
        "after warm-up (default: 10; 0 skips timing)")
    add("--backend", choices=BACKENDS, default="auto", help="how the models run (runners.py); auto: a CUDA graph on a "
        "GPU; on a CPU the eager model for --dataset, the fastest path for --input, as predict.py (default: auto)")
    add("--input", nargs="+", metavar="FILE_OR_DIR", help="predict these files or folders instead (as predict.py)")
    add("--output", metavar="DIR", help="where --input's masks, probability maps and overlays go (as predict.py)")
    add("--overwrite", action="store_true", help="with --input: replace an earlier prediction's files in --output")
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Every flag combination that cannot work, refused before any model is loaded."""
    if (args.dataset is None) == (args.input is None):
        raise UsageError("pass --dataset (metrics, comparison, panels) or --input with --output (prediction)")
    if args.input is not None and (args.output is None or len(args.checkpoint) > 1 or args.panels):
        raise UsageError("--input needs --output DIR and exactly one --checkpoint (--panels goes with --dataset)")
    if args.input is not None and args.froc:
        raise UsageError("--froc goes with --dataset: the FROC needs the masks of a dataset")
    if args.froc and len(args.checkpoint) > len(PALETTE):
        raise UsageError(f"--froc draws at most {len(PALETTE)} checkpoints; run it on fewer")
    if args.dataset is not None and args.output is not None:
        raise UsageError("--output goes with --input; with --dataset use --json FILE and --panels DIR")
    if args.overlap is not None:
        overlap_for({}, args.overlap)  # UsageError outside [0, 1)
    if args.image_size is not None and (args.image_size < 32 or args.image_size % 32):
        raise UsageError(f"--image-size {args.image_size}: must be a positive multiple of 32 (the encoder's "
                         "output stride)")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                               ("--timing-runs", args.timing_runs, 0), ("--limit", args.limit, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag} {value}: must be at least {least}")


def main(args: argparse.Namespace) -> int:
    """Run the mode the flags ask for; returns the exit code. User errors raise UsageError, CheckpointError or
    DataError (run_command turns them into one line on stderr and exit code 2)."""
    check_flags(args)
    device = resolve_device(args.device)
    if args.input is not None:
        return run_prediction(args.checkpoint[0], args.input, args.output, image_size=args.image_size, device=device,
                              tta=args.tta, amp=args.amp, json_path=args.json, backend=args.backend,
                              overwrite=args.overwrite, overlap=args.overlap)
    return evaluate_checkpoints(args, device)


def load_candidates(paths: list[str], device: torch.device) -> list[Candidate]:
    """Each checkpoint's model, named by its file stem (or its path, where two stems are the same)."""
    stems = [Path(path).stem for path in paths]
    names = stems if len(set(stems)) == len(stems) else list(paths)
    candidates = []
    for path, name in zip(paths, names):
        model, checkpoint = load_checkpoint(path, device)
        # Keep epoch, args, metrics...; drop the tensors (weights, optimizer state), which can take gigabytes.
        candidates.append(Candidate(path, name, model, {k: v for k, v in checkpoint.items() if k not in HEAVY_ENTRIES}))
    classes = {c.model.config["num_classes"] for c in candidates}
    if len(classes) > 1:
        raise UsageError(f"--checkpoint: the models have different numbers of classes ({sorted(classes)}); compare "
                         "models of one task")
    return candidates


def evaluate_checkpoints(args: argparse.Namespace, device: torch.device) -> int:
    """Metrics of every checkpoint on one split, the Table 2/4 comparison, disagreements, panels and --json."""
    for flag, path in (("--json", args.json), ("--froc", args.froc)):
        if path:
            check_writable_file(path, flag)
    candidates = load_candidates(args.checkpoint, device)
    size = image_size_for({c.name: c.checkpoint for c in candidates}, args.image_size, args.dataset)
    # The table's numbers come from the model itself: a CUDA graph replays its very kernels, ONNX Runtime would round
    # otherwise, so auto means a graph on a GPU and the eager model on a CPU here (predict.py's auto is the fastest).
    backend = args.backend if args.backend != "auto" else "graph" if device.type == "cuda" else "eager"
    for candidate in candidates:
        candidate.window = window_for(candidate.checkpoint, size)  # its patch, if it had one
        candidate.overlap = overlap_for(candidate.checkpoint, args.overlap)
        cache = cache_folder("onnx", candidate.path, flag=None) if backend == "onnxruntime" else None
        candidate.runner = fast_model(candidate.model, device, backend=backend, checkpoint=candidate.path, cache=cache,
                                      size=size)
    channels = 3 if args.dataset == "voc" else 1  # raw [0, 1] pixels; each model converts and normalises them
    num_classes = candidates[0].model.config["num_classes"]
    if args.froc and num_classes != 1:
        raise UsageError(f"--froc: the FROC counts the lesions of binary (1-logit) models; "
                         f"{candidates[0].path} has {num_classes} classes")
    options = {"num_classes": num_classes} if args.dataset == "folder" else {}  # a folder's masks follow the model
    if args.cache_dir and args.dataset != "synthetic":
        options["cache_dir"] = args.cache_dir
    dataset = build_dataset(args.dataset, args.data_root, args.split, size, in_channels=channels,
                            mean=(0.0,) * channels, std=(1.0,) * channels, augment=False, limit=args.limit, **options)
    prepare_datasets([dataset], args.workers)  # an image that cannot be used is left out and named, as in training
    if dataset.num_classes != num_classes:
        raise UsageError(f"--checkpoint {candidates[0].path}: the model has {num_classes} output(s), --dataset "
                         f"{args.dataset} needs {dataset.num_classes}")
    if len(dataset) == 0:
        raise UsageError(f"--dataset {args.dataset} --split {args.split}: no images")
    voc = (dataset.images, dataset.labels) if args.dataset == "voc" else None
    windows = "".join(f", {c.name} by {window_count(size, c.window, c.overlap)} windows of "
                      f"{c.window[0]}x{c.window[1]} (overlap {c.overlap:g})"
                      for c in candidates if c.window)
    print(f"{args.dataset} {args.split}: {len(dataset)} images, input {size[0]}x{size[1]}"
          f"{windows}, on {device}{', with --tta' if args.tta else ''}"
          + (", scored at the original sizes" if voc else ""))
    metrics, lesions, scores = evaluate_dataset(
        candidates, dataset, None if voc is None else voc[1], batch_size=args.batch_size,
        workers=args.workers, tta=args.tta, amp=args.amp)

    example = dataset[0][0][None]  # (1, C, H, W): timing on a real image
    binary, rows = num_classes == 1, []
    for candidate, metric, lesion, per_image in zip(candidates, metrics, lesions, scores):
        summary = metric.summary() if lesion is None else {**metric.summary(), **lesion.summary()}
        print_metrics(candidate, summary)
        window = candidate.window or size  # a windowed image costs its windows' FLOPs
        shape = (1, candidate.model.config["in_channels"], *window)
        flops = count_flops(candidate.model, shape) * window_count(size, window, candidate.overlap)
        rows.append(dict(name=candidate.name, checkpoint=candidate.path, architecture=candidate.architecture,
                         model_config=candidate.model.config, epoch=candidate.checkpoint.get("epoch"), metrics=summary,
                         params=count_parameters(candidate.model), flops=flops, thesis_flops_g=flops / 4 / 1e9,
                         window=list(candidate.window or size), overlap=candidate.overlap,
                         inference_s=inference_seconds(
                             candidate.runner, example, amp=args.amp, runs=args.timing_runs,
                             window=candidate.window, overlap=candidate.overlap,
                             batch_size=args.batch_size),
                         **({} if lesion is None else {"froc": lesion.froc()}),
                         **{f"per_image_{'dice' if binary else 'miou'}": dict(zip(dataset.ids, per_image))}))
    print()
    print_table([dict(r, **r["metrics"]) for r in rows], binary=binary, device=str(device), runs=args.timing_runs,
                input_shape=(1, candidates[0].model.config["in_channels"], *size), original_sizes=voc is not None)
    names = [c.name for c in candidates]
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
    if args.froc:
        draw_froc(args.froc, {row["name"]: row["froc"] for row in rows},
                  title=f"{args.dataset} {args.split}, {len(dataset)} images: FROC, a lesion found "
                        f"by a mark with IoU >= {rows[0]['metrics']['lesion_min_iou']:g}")
        print(f"\nFROC of {len(rows)} model(s) in {args.froc}")
    if args.json:
        write_json(args.json, dict(dataset=args.dataset, split=args.split, images=len(dataset), image_size=list(size),
                                   tta=args.tta, amp=args.amp, device=str(device), models=rows,
                                   disagreements=disagreeing, panels=panels, froc_figure=args.froc))
    return 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(run_command("evaluate.py", lambda: main(arguments), (UsageError, CheckpointError, DataError)))
