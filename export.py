"""Deployment of the Tables 2 and 4 models: a train.py checkpoint -> one ONNX file, checked by ONNX
Runtime against PyTorch before it appears (docs/deploy.md: the graph's contract, the tolerance).
In: images in [0, 1], float32 (B, C, H, W), H and W multiples of 32; out: float32 logits.

    python export.py --checkpoint runs/cbis/best.pt --output model.onnx [--check-image scan.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from data import DataError, preprocess_mammogram, transform_voc
from engine.backends import NormalisedModel, export_graph
from engine.checkpoints import CheckpointError, load_checkpoint
from engine.cli import ArgumentParser, UsageError, check_writable_file, run_command
from engine.inference import (image_size_for, overlap_for, to_model_input, trained_on_mammograms,
                              window_for)
from readers.atomic import atomic_write
from readers.mammograms import read_image_file
from readers.synthetic import synthetic_mammogram

# ONNX Runtime may differ from PyTorch by at most TOLERANCE x max(1, max |logit|): 5x above the
# rounding measured on the five thesis models, 20x below simulated export bugs (docs/deploy.md).
TOLERANCE = 1e-2
DEFAULT_OPSET = 17
# 11: the first whose Resize matches PyTorch's interpolation; 20: the TorchScript exporter's last
OPSETS = range(11, 21)
INPUT_NAME, OUTPUT_NAME = "image", "logits"
MISSING_ONNX = "needs onnx and onnxruntime: pip install onnx onnxruntime"


class CheckFailed(Exception):
    """ONNX Runtime disagrees with PyTorch beyond TOLERANCE: one line, exit code 1, no file."""


def graph_metadata(config: dict, checkpoint: dict, image_size: tuple[int, int]) -> dict[str, str]:
    """The metadata_props a user of the file needs: what to feed, what comes out, its origin."""
    binary, mammogram = config["num_classes"] == 1, trained_on_mammograms(checkpoint)
    window, overlap = window_for(checkpoint, image_size), overlap_for(checkpoint, None)
    metadata = {
        "model_config": json.dumps(config),
        "mean": json.dumps(config["mean"]), "std": json.dumps(config["std"]),
        "input": f"{INPUT_NAME}: float32 (B, {config['in_channels']}, H, W), "
                 f"{'gray' if config['in_channels'] == 1 else 'RGB'} pixels scaled to [0, 1]; H "
                 "and W multiples of 32; (x - mean) / std is inside the graph",
        "output": f"{OUTPUT_NAME}: float32 (B, {config['num_classes']}, H, W)",
        "mask": ("lesion where logit > 0, i.e. sigmoid > 0.5" if binary else
                 "class = argmax over the K logits"),
        "training_image_size": json.dumps(list(image_size)),
        "window": json.dumps(list(window or image_size)), "overlap": json.dumps(overlap),
        "prediction": "the image at training_image_size by Gaussian-weighted sliding windows "
                      "(engine/windows.py)" if window else
                      "the image at training_image_size in one pass",
        "preprocessing": ("mammograms.preprocess_mammogram: resized, contrast stretched to the "
                          "0.5th-99.5th percentiles, breast on the left") if mammogram else
                         "data.transform_voc: longer side fitted, black padding",
    }
    for key in ("epoch", "metric_name", "best_metric", "metrics"):
        if checkpoint.get(key) is not None:
            metadata[f"checkpoint_{key}"] = json.dumps(checkpoint[key])
    return metadata


def check_pixels(path: str | None, mammogram: bool, seed: int = 0) -> tuple[np.ndarray, str]:
    """(image as read_image_file gives it, its name): --check-image, else a synthetic mammogram,
    or for a VOC model a smooth random 'photo' with edges and noise."""
    if path is not None:
        return read_image_file(Path(path))[0], path
    rng = np.random.default_rng(seed)
    if mammogram:
        return synthetic_mammogram((640, 512), rng)[0], "a synthetic mammogram"
    blobs = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
    blobs = blobs.resize((480, 360), Image.BICUBIC)
    photo = np.asarray(blobs, dtype=np.float32) / 255
    photo[100:220, 150:330] = rng.random(3)  # an object with sharp edges
    photo = np.clip(photo + 0.03 * rng.standard_normal(photo.shape), 0, 1).astype(np.float32)
    return photo, "a random photo"


def prepared_input(pixels: np.ndarray, size: tuple[int, int], config: dict,
                   mammogram: bool) -> torch.Tensor:
    """An image as read -> (C, H, W) in [0, 1] at `size`, as inference.predict_image feeds it."""
    if mammogram:
        luminance = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        gray = pixels if pixels.ndim == 2 else pixels @ luminance
        # orient=True mirrors the breast to the left, as predict_image does after orient=False
        # (so that it can undo the mirror)
        image = torch.from_numpy(preprocess_mammogram(gray, [], size, orient=True)[0])[None]
    else:
        rgb = Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")
        canvas, _ = transform_voc(rgb, Image.new("L", rgb.size), size, None)
        rgb = np.asarray(canvas, dtype=np.float32) / 255
        image = torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H, W)
    if image.shape[0] == 1 and config["in_channels"] == 3:  # gray: three equal channels
        return image.expand(3, -1, -1).contiguous()
    if image.shape[0] == 3 and config["in_channels"] == 1:  # RGB: its luminance (PIL's "L")
        return (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    return image


def compare(session, model: nn.Module, images: torch.Tensor) -> tuple[float, float, float]:
    """ONNX Runtime vs PyTorch (to_model_input, the model) on images in [0, 1] (B, C, H, W) ->
    (max |logit difference|, max |logit|, fraction of mask pixels that differ)."""
    with torch.no_grad():
        expected = model(to_model_input(images, model.config)).numpy()  # (B, K, H, W)
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    if got.shape != expected.shape:  # before subtracting, which would broadcast (B, 1, ...)
        raise CheckFailed(f"ONNX Runtime returned logits {got.shape}, PyTorch {expected.shape}")
    if expected.shape[1] == 1:
        masks_differ = (got[:, 0] > 0) != (expected[:, 0] > 0)
    else:
        masks_differ = got.argmax(axis=1) != expected.argmax(axis=1)
    return (float(np.abs(got - expected).max()), float(np.abs(expected).max()),
            float(masks_differ.mean()))


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="export.py", description=__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint written by train.py; the model is rebuilt from the file "
                             "alone")
    parser.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--check-image", metavar="FILE", help="DICOM, PNG, JPEG or PGM image to "
                        "compare ONNX Runtime with PyTorch on (default: a synthetic mammogram or a "
                        "random photo, seeded)")
    parser.add_argument("--image-size", type=int, metavar="PIXELS", help="square side of the "
                        "check, a multiple of 32 (default: the checkpoint's patch or training "
                        "size, else 256 binary / 384 multiclass)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {OPSETS.start}-{OPSETS.stop - 1} (default: "
                             f"{DEFAULT_OPSET})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    parser.epilog = ("exit codes: 0 written; 1 ONNX Runtime disagrees with PyTorch (no file "
                     "written); 2 bad input\n")
    return parser


def main(args: argparse.Namespace) -> None:
    """Export, check, then move the file into place; user errors raise UsageError and the like."""
    output = Path(args.output)
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder; name the .onnx file to write")
    if output.exists() and not args.force:
        raise UsageError(f"--output {output} exists; pass --force to overwrite it")
    if args.opset not in OPSETS:
        raise UsageError(f"--opset {args.opset}: pass {OPSETS.start}-{OPSETS.stop - 1} (the "
                         "TorchScript exporter's)")
    if not output.parent.is_dir():
        raise UsageError(f"--output {output}: the folder {output.parent} does not exist; create "
                         "it first")
    try:  # optional dependencies of this script only
        import onnx
        import onnxruntime
    except ImportError:
        raise UsageError(MISSING_ONNX) from None
    model, checkpoint = load_checkpoint(args.checkpoint)
    config = model.config
    trained = image_size_for({args.checkpoint: checkpoint}, None)  # the whole image's
    size = (image_size_for({args.checkpoint: checkpoint}, args.image_size)  # checked, 0 refused
            if args.image_size is not None else window_for(checkpoint, trained) or trained)
    second_size = (max(32, size[0] // 64 * 32), size[1] + 32)  # half as high, a step wider
    mammogram = trained_on_mammograms(checkpoint)
    pixels, source = check_pixels(args.check_image, mammogram=mammogram)
    first = prepared_input(pixels, size, config, mammogram)[None]  # (1, C, H, W)
    second = prepared_input(pixels, second_size, config, mammogram)
    second = torch.stack([second, second.flip(-2)])  # (2, C, H', W'): and its upside-down copy

    check_writable_file(output, "--output")
    graph = onnx.load_from_string(export_graph(NormalisedModel(model).eval(), args.opset,
                                               in_channels=config["in_channels"]))
    onnx.helper.set_model_props(graph, graph_metadata(config, checkpoint, trained))
    graph.doc_string = (f"{config['encoder']} + {config['decoder']} exported from "
                        f"{Path(args.checkpoint).name}")
    onnx.checker.check_model(graph)
    exported = graph.SerializeToString()
    session = onnxruntime.InferenceSession(exported, providers=["CPUExecutionProvider"])
    for images in (first, second):
        diff, scale, differ = compare(session, model, images)
        limit = TOLERANCE * max(1.0, scale)
        batch, _, height, width = images.shape
        print(f"check {height}x{width} batch {batch} on {source}: max |logit diff| {diff:.2e} "
              f"(max |logit| {scale:.3g}, limit {limit:.2e}), mask pixels that differ "
              f"{100 * differ:.4f}%")
        if not diff <= limit:  # NaN fails too
            raise CheckFailed(f"{args.checkpoint}: ONNX Runtime differs from PyTorch by {diff:.3g} "
                              f"at {height}x{width}, above the limit {limit:.3g}; {output} was not "
                              "written")
    atomic_write(output, exported)  # only a checked file appears, whole
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB, opset {args.opset}, "
          f"{config['encoder']} + {config['decoder']}, {config['in_channels']} -> "
          f"{config['num_classes']} channels)")


def cli(argv: list[str] | None = None) -> int:
    """Parse, run main(), and turn a user's error into one line on stderr and an exit code."""
    args = get_args_parser().parse_args(argv)
    return run_command("export.py", lambda: main(args),
                       (UsageError, CheckpointError, DataError, CheckFailed),
                       exit_codes={CheckFailed: 1})


if __name__ == "__main__":
    sys.exit(cli())
