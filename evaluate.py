"""Evaluation (thesis §5-6): the numbers of Tables 2-4 from trained checkpoints, Figs. 7-11, FROC.

    python evaluate.py --checkpoint best.pt --dataset cbis --data-root DIR     # Tables 2-3 (val)
    python evaluate.py --checkpoint best.pt --dataset cbis --data-root DIR --split test
    python evaluate.py --checkpoint A.pt B.pt --dataset mias --data-root DIR --froc froc.png
    python evaluate.py --checkpoint voc.pt --dataset voc --data-root DIR        # Table 4 (mIoU)
    python evaluate.py --checkpoint best.pt --input scans/ --output masks/     # = predict.py

Models are rebuilt from their checkpoints and compared on the same batches: binary sets at the
input size, VOC at each image's original size (docs/deploy.md; which Dice: docs/metrics.md).
Exit codes: 0 done; 1 some --input files failed (the others were written); 2 bad flags or files.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data import DataError, build_dataset, cache_folder, prepare_datasets
from engine.backends import BACKENDS, fast_model
from engine.charts import PALETTE, draw_froc
from engine.checkpoints import CheckpointError, load_checkpoint
from engine.cli import (ArgumentParser, UsageError, check_writable_file, refuse_file_in_the_way,
                        run_command)
from engine.devices import AMP_DTYPES, default_workers, resolve_device
from engine.inference import (image_size_for, inference_seconds, overlap_for,
                              predict_dataset_batch, sliding_window_logits, window_for)
from engine.measure import count_flops, count_parameters
from engine.panels import write_panel
from engine.scans import run_prediction
from engine.tables import disagreements, print_disagreements, print_metrics, print_table
from engine.windows import window_count
from metrics import ConfusionMatrix, LesionStats, build_metrics, predict_labels
from readers.atomic import write_json
from readers.voc import read_voc_label
from recipes import PRESETS

PANELS_PER_KIND = 3  # Fig. 7-9 show two or three cases each
DISAGREEMENTS_LISTED = 5
# checkpoint entries the command never reads: tensors that can take gigabytes
HEAVY_ENTRIES = ("model", "optimizer", "scheduler", "scaler", "rng")


# ----------------------------------------------- Metrics on a dataset, comparison of models, panels
@dataclass
class Candidate:
    """One checkpoint under evaluation: its model, and the runner (engine/backends.fast_model)."""
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


def evaluate_dataset(candidates: list[Candidate], dataset, voc_labels: list | None, *,
                     batch_size: int, workers: int, tta: bool,
                     amp: str) -> tuple[list, list, np.ndarray]:
    """Every model on the same batches -> (metrics, LesionStats or None, per-image scores (M, N)).

    The per-image score is Dice (binary) or the image's own mIoU; voc_labels: VOC's original label
    files, or None for sets scored at the input size, whose models are prepared as mammograms."""
    # no drop_last: every image once
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    metrics = [build_metrics(c.model.config["num_classes"]) for c in candidates]
    lesions = [LesionStats() if c.model.config["num_classes"] == 1 else None for c in candidates]
    class_scores: list[list[float]] = [[] for _ in candidates]
    seen = 0
    for images, masks in loader:  # images (B, C, H, W) in [0, 1]: the dataset does not normalise
        targets = None if voc_labels is None else [
            read_voc_label(voc_labels[seen + j]).astype(np.int64) for j in range(len(images))]
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
                if isinstance(metric, ConfusionMatrix):  # a folder of class-index masks
                    scores.extend(image_miou(pred, target, metric.num_classes)
                                  for pred, target in zip(labels, targets_here))
                continue
            labels = predict_dataset_batch(candidate.runner, images, [t.shape for t in targets],
                                           tta=tta, amp=amp, mammogram=False,
                                           window=candidate.window, overlap=candidate.overlap)
            for pred, target in zip(labels, targets):  # VOC: at the original size
                target = torch.from_numpy(target).to(pred.device)  # (h, w)
                metric.update(pred[None], target[None])
                scores.append(image_miou(pred, target, metric.num_classes))
        seen += len(images)
    if seen != len(dataset):
        raise RuntimeError(f"evaluated {seen} images of {len(dataset)}")
    if isinstance(metrics[0], ConfusionMatrix):
        return metrics, lesions, np.asarray(class_scores, dtype=np.float64)
    # binary: BinaryStats' per-image Dice, with its empty-mask convention
    return metrics, lesions, np.stack([m.per_image()[0].numpy() for m in metrics])


def image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """One image's mIoU (H, W) label maps, over the classes in its target or prediction."""
    single = ConfusionMatrix(num_classes)
    single.update(pred[None], target[None])
    return single.mean_iou()


def pick_cases(scores: np.ndarray, per_kind: int = PANELS_PER_KIND) -> list[tuple[str, int]]:
    """(kind, image index) for panels, each image once, from scores (M, N) without NaN:
    "disagreement" (Fig. 9), "hard" (Fig. 8) and "ordinary" (Fig. 7)."""
    index = np.flatnonzero(~np.isnan(scores).any(axis=0))
    if index.size == 0:
        return []
    mean, spread = scores[:, index].mean(axis=0), np.ptp(scores[:, index], axis=0)
    orders = [("hard", np.argsort(mean, kind="stable")),  # the lowest mean score
              ("ordinary", np.argsort(np.abs(mean - np.median(mean)), kind="stable"))]
    if len(scores) > 1:  # the largest spread between models; an equal score is no disagreement
        orders.insert(0, ("disagreement",
                          [i for i in np.argsort(-spread, kind="stable") if spread[i] > 0]))
    cases, used = [], set()
    for kind, order in orders:
        picked = [int(index[i]) for i in order if int(index[i]) not in used][:per_kind]
        used.update(picked)
        cases += [(kind, i) for i in picked]
    return cases


def write_panels(folder: Path, cases: list[tuple[str, int]], candidates: list[Candidate], dataset,
                 voc: tuple[list, list] | None, *, tta: bool, amp: str) -> list[str]:
    """One panel per case, <kind>-<rank>-<image id>.png; voc: (image files, label files) or None."""
    files, ranks = [], Counter()
    num_classes = candidates[0].model.config["num_classes"]
    for kind, index in cases:
        image, mask = dataset[index]  # (C, H, W) in [0, 1], (H, W)
        batch = image[None]  # (1, C, H, W)
        if voc is None:
            # (H, W[, 3])
            shown = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
            target, sizes = mask.numpy(), None
        else:
            with Image.open(voc[0][index]) as original:  # (h, w, 3) at the original size
                shown = np.asarray(original.convert("RGB"), dtype=np.float32) / 255
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


# ------------------------------------------------------------------------------------- The command
def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="evaluate.py", description=__doc__)
    add = parser.add_argument
    add("--checkpoint", nargs="+", required=True, metavar="CKPT", help="checkpoint(s) written by "
        "train.py; several are compared on the same images (--dataset only)")
    add("--dataset", choices=list(PRESETS),
        help="evaluate on this dataset's --split (metrics, comparison table, --panels)")
    add("--data-root", metavar="DIR", help="dataset folder (see data.py); none for synthetic")
    add("--cache-dir", metavar="DIR", help="folder for the preprocessed mammograms (default: "
        "$UNET_FUSION_CACHE, else ~/.cache/unet-fusion/<dataset>-<hash>)")
    add("--split", default="val", help="split to evaluate (default: val, the split the thesis "
        "reports; test = CBIS-DDSM's official test CSV, held out from training and model "
        "selection)")
    add("--image-size", type=int, metavar="PIXELS", help="square input side, a multiple of 32 "
        "(default: the size the checkpoints were trained at, else Table 1's for the dataset: "
        "recipes.PRESETS)")
    add("--batch-size", type=int, default=8, help="images or windows per forward pass (default: 8)")
    add("--overlap", type=float, metavar="SHARE", help="overlap of the sliding windows of a model "
        "trained on patches, in [0, 1) (default: the checkpoint's)")
    add("--workers", type=int, default=default_workers(), help="DataLoader worker processes "
        f"(default: the machine's cores, at most 4: {default_workers()} here)")
    add("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N "
        "(default: auto)")
    add("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype of the forward "
        "pass; scores are computed in fp32 (default: none)")
    add("--tta", action="store_true", help="average the probabilities of each image and its "
        "mirror image: vertical for mammogram models, horizontal for VOC ones")
    add("--limit", type=int, metavar="N", help="evaluate only the first N images of the split")
    add("--json", metavar="FILE", help="also write every number (per-image scores too) to FILE")
    add("--panels", metavar="DIR", help=f"write Fig. 7-11 style panels of {PANELS_PER_KIND} "
        "disagreement, hard and ordinary cases to DIR")
    add("--froc", metavar="FILE.png", help="draw the FROC curves of the checkpoints to FILE.png")
    add("--timing-runs", type=int, default=10, metavar="N", help="forward passes timed for the "
        "inference-time column, after warm-up (default: 10; 0 skips timing)")
    add("--backend", choices=BACKENDS, default="auto", help="how the models run "
        "(engine/backends.py); auto: a CUDA graph on a GPU; on a CPU the eager model for "
        "--dataset, the fastest path for --input, as predict.py (default: auto)")
    add("--input", nargs="+", metavar="FILE_OR_DIR",
        help="predict these files or folders instead (as predict.py)")
    add("--output", metavar="DIR",
        help="where --input's masks, probability maps and overlays go (as predict.py)")
    add("--overwrite", action="store_true",
        help="with --input: replace an earlier prediction's files in --output")
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Every flag combination that cannot work, refused before any model is loaded."""
    if (args.dataset is None) == (args.input is None):
        raise UsageError("pass --dataset (metrics, comparison, panels) or --input with --output "
                         "(prediction)")
    if args.input is not None and (args.output is None or len(args.checkpoint) > 1 or args.panels):
        raise UsageError("--input needs --output DIR and exactly one --checkpoint (--panels goes "
                         "with --dataset)")
    if args.input is not None and args.froc:
        raise UsageError("--froc goes with --dataset: the FROC needs the masks of a dataset")
    if args.froc and len(args.checkpoint) > len(PALETTE):
        raise UsageError(f"--froc draws at most {len(PALETTE)} checkpoints; run it on fewer")
    if args.dataset is not None and args.output is not None:
        raise UsageError("--output goes with --input; with --dataset use --json FILE and --panels "
                         "DIR")
    if args.overlap is not None:
        overlap_for({}, args.overlap)  # UsageError outside [0, 1)
    if args.image_size is not None and (args.image_size < 32 or args.image_size % 32):
        raise UsageError(f"--image-size {args.image_size}: must be a positive multiple of 32 (the "
                         "encoder's output stride)")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                               ("--timing-runs", args.timing_runs, 0), ("--limit", args.limit, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag} {value}: must be at least {least}")


def main(args: argparse.Namespace) -> int:
    """The mode the flags ask for -> the exit code; run_command turns user errors into one line."""
    check_flags(args)
    device = resolve_device(args.device)
    if args.input is not None:
        return run_prediction(args.checkpoint[0], args.input, args.output,
                              image_size=args.image_size, device=device, tta=args.tta,
                              amp=args.amp, json_path=args.json, backend=args.backend,
                              overwrite=args.overwrite, overlap=args.overlap)
    return evaluate_checkpoints(args, device)


def load_candidates(paths: list[str], device: torch.device) -> list[Candidate]:
    """Each checkpoint's model, named by its file stem (or its path, where two stems are equal)."""
    stems = [Path(path).stem for path in paths]
    names = stems if len(set(stems)) == len(stems) else list(paths)
    candidates = []
    for path, name in zip(paths, names):
        model, checkpoint = load_checkpoint(path, device)
        # Keep epoch, args, metrics...; drop the weights and optimizer state.
        record = {k: v for k, v in checkpoint.items() if k not in HEAVY_ENTRIES}
        candidates.append(Candidate(path, name, model, record))
    classes = {c.model.config["num_classes"] for c in candidates}
    if len(classes) > 1:
        raise UsageError(f"--checkpoint: the models have different numbers of classes "
                         f"({sorted(classes)}); compare models of one task")
    return candidates


def evaluate_checkpoints(args: argparse.Namespace, device: torch.device) -> int:
    """Every checkpoint on one split: metrics, Table 2/4, disagreements, panels, FROC and --json."""
    for flag, path in (("--json", args.json), ("--froc", args.froc)):
        if path:
            check_writable_file(path, flag)
    if args.panels:
        refuse_file_in_the_way(args.panels, "--panels")
    candidates = load_candidates(args.checkpoint, device)
    size = image_size_for({c.name: c.checkpoint for c in candidates}, args.image_size, args.dataset)
    # The table's numbers come from the model itself: a CUDA graph replays its very kernels, ONNX
    # Runtime would round otherwise; so auto is a graph on a GPU, the eager model on a CPU here
    # (predict.py's auto is the fastest path).
    backend = (args.backend if args.backend != "auto" else
               "graph" if device.type == "cuda" else "eager")
    for candidate in candidates:
        candidate.window = window_for(candidate.checkpoint, size)  # its patch, if it had one
        candidate.overlap = overlap_for(candidate.checkpoint, args.overlap)
        cache = (cache_folder("onnx", candidate.path, flag=None) if backend == "onnxruntime"
                 else None)
        candidate.runner = fast_model(candidate.model, device, backend=backend,
                                      checkpoint=candidate.path, cache=cache, size=size,
                                      amp=args.amp)
    # raw [0, 1] pixels; each model converts and normalises them
    channels = 3 if args.dataset == "voc" else 1
    num_classes = candidates[0].model.config["num_classes"]
    if args.froc and num_classes != 1:
        raise UsageError(f"--froc: the FROC counts the lesions of binary (1-logit) models; "
                         f"{candidates[0].path} has {num_classes} classes")
    # a folder's masks follow the model
    options = {"num_classes": num_classes} if args.dataset == "folder" else {}
    if args.cache_dir and args.dataset != "synthetic":
        options["cache_dir"] = args.cache_dir
    dataset = build_dataset(args.dataset, args.data_root, args.split, size, in_channels=channels,
                            mean=(0.0,) * channels, std=(1.0,) * channels, augment=False,
                            limit=args.limit, **options)
    # an image that cannot be used is left out and named, as in training
    prepare_datasets([dataset], args.workers)
    if dataset.num_classes != num_classes:
        raise UsageError(f"--checkpoint {candidates[0].path}: the model has {num_classes} "
                         f"output(s), --dataset {args.dataset} needs {dataset.num_classes}")
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
        seconds = inference_seconds(candidate.runner, example, amp=args.amp, runs=args.timing_runs,
                                    window=candidate.window, overlap=candidate.overlap,
                                    batch_size=args.batch_size)
        rows.append(dict(name=candidate.name, checkpoint=candidate.path,
                         architecture=candidate.architecture, model_config=candidate.model.config,
                         epoch=candidate.checkpoint.get("epoch"), metrics=summary,
                         params=count_parameters(candidate.model), flops=flops,
                         thesis_flops_g=flops / 4 / 1e9, window=list(candidate.window or size),
                         overlap=candidate.overlap, inference_s=seconds,
                         **({} if lesion is None else {"froc": lesion.froc()}),
                         **{f"per_image_{'dice' if binary else 'miou'}":
                            dict(zip(dataset.ids, per_image))}))
    print()
    print_table([dict(r, **r["metrics"]) for r in rows], binary=binary, device=str(device),
                runs=args.timing_runs, original_sizes=voc is not None,
                input_shape=(1, candidates[0].model.config["in_channels"], *size))
    names = [c.name for c in candidates]
    disagreeing = (disagreements(dataset.ids, names, scores, DISAGREEMENTS_LISTED)
                   if len(candidates) > 1 else [])
    print_disagreements(disagreeing, binary=binary)
    panels = []
    if args.panels:
        panels = write_panels(Path(args.panels), pick_cases(scores), candidates, dataset, voc,
                              tta=args.tta, amp=args.amp)
        print(f"\n{len(panels)} panels in {args.panels}: "
              + ", ".join(Path(p).name for p in panels))
    if args.froc:
        draw_froc(args.froc, {row["name"]: row["froc"] for row in rows},
                  title=f"{args.dataset} {args.split}, {len(dataset)} images: FROC, a lesion found "
                        f"by a mark with IoU >= {rows[0]['metrics']['lesion_min_iou']:g}")
        print(f"\nFROC of {len(rows)} model(s) in {args.froc}")
    if args.json:
        write_json(args.json, dict(dataset=args.dataset, split=args.split, images=len(dataset),
                                   image_size=list(size), tta=args.tta, amp=args.amp,
                                   device=str(device), models=rows, disagreements=disagreeing,
                                   panels=panels, froc_figure=args.froc))
    return 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(run_command("evaluate.py", lambda: main(arguments),
                         (UsageError, CheckpointError, DataError)))
