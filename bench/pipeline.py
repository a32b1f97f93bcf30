"""Prediction on a folder as predict.py runs it (read, prepare, model, write), once per backend of
engine/backends.py, on synthetic 16-bit scans and a random-weight thesis model written here:
images/s, where the time goes, and the model's time per image against its CUDA graph's.

    python bench/pipeline.py [--images 24] [--device cuda] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from engine.scans import run_prediction  # noqa: E402
from model import build_model  # noqa: E402
from readers.synthetic import synthetic_mammogram  # noqa: E402
from engine.devices import autocast, environment, resolve_device
from engine.measure import graph_latency, median_seconds  # noqa: E402


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    print(environment(device))
    torch.manual_seed(0)
    widths = {"decoder_channels": (16,) * 5} if args.narrow else {}  # the dry run's toy size
    model = build_model("resnet34", "fusion", num_classes=1, in_channels=1, **widths).eval()
    results = dict(environment=environment(device), images=args.images, rows=[])
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = folder / "model.pt"
        torch.save({"model": model.state_dict(), "model_config": model.config,
                    "args": {"image_size": args.image_size}}, checkpoint)
        (folder / "scans").mkdir()
        for index in range(args.images):
            image = synthetic_mammogram((args.scan_size, args.scan_size),
                                        np.random.default_rng(index))[0]
            Image.fromarray((image * 65535).astype(np.uint16)).save(
                folder / "scans" / f"scan{index:03d}.png")
        for backend in args.backends or (["eager", "graph"] if device.type == "cuda"
                                         else ["eager", "onnxruntime"]):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):  # one line per image: keep only the summary
                run_prediction(str(checkpoint), [str(folder / "scans")],
                               str(folder / f"out-{backend}"), image_size=None, device=device,
                               tta=False, amp=args.amp, json_path=None, backend=backend)
            summary = next(line for line in printed.getvalue().splitlines()
                           if "images/s" in line)
            results["rows"].append(dict(backend=backend, summary=summary))
            print(f"{backend:<12} {summary}", flush=True)
        if device.type == "cuda":  # the card's own time for the model, as in bench/gpu.sh's table
            model = model.to(device)
            x = torch.rand(1, 1, args.image_size, args.image_size, device=device)

            def forward(batch):
                with torch.no_grad(), autocast(device, args.amp, cache_enabled=False):
                    model(batch)

            results["graph_ms"] = 1e3 * graph_latency(forward, x, device=device, warmup=5,
                                                      repeats=50)
            results["eager_ms"] = 1e3 * median_seconds(lambda: forward(x), device=device, warmup=5,
                                                       repeats=50)
            print(f"model alone, batch 1: eager {results['eager_ms']:.2f} ms, "
                  f"CUDA graph {results['graph_ms']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24, help="synthetic mammograms to predict")
    parser.add_argument("--scan-size", type=int, default=1024,
                        help="their side in pixels (mini-MIAS': 1024)")
    parser.add_argument("--image-size", type=int, default=256,
                        help="the model's input side (Table 1: 256)")
    parser.add_argument("--narrow", action="store_true", help="a narrow decoder, for a dry run")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"],
                        help="autocast precision")
    parser.add_argument("--backends", nargs="+", help="engine/backends.py's paths to time "
                        "(default: eager and graph on a GPU, eager and onnxruntime on a CPU)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
