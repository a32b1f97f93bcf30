"""Each way engine/backends.py runs the thesis model on this machine's CPU, side by side: eager,
channels_last, torch.compile and ONNX Runtime, batch 1, with each path's logits and mask against
eager's. --backend auto's CPU choice follows what this prints (docs/speed.md).

    python bench/cpu_predict.py [--models "Table 2 (A)"] [--rounds 5] [--threads 2] [--json FILE]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from engine.inference import to_model_input  # noqa: E402
from model import build_model  # noqa: E402
from engine.backends import OnnxRuntimeModel, export_graph  # noqa: E402
from readers.synthetic import synthetic_mammogram  # noqa: E402
from engine.devices import environment
from engine.measure import median_seconds  # noqa: E402

ROWS = {  # label: (build_model kwargs, input side)
    "Table 2 (A) proposed decoder, ResNet-34": (dict(encoder="resnet34", decoder="fusion"), 256),
    "Table 2 (B) SMP Unet, ResNet-34": (dict(encoder="resnet34", decoder="unet"), 256),
}


def paths_of(model: torch.nn.Module, folder: Path) -> dict:
    """name -> (runner, seconds of its first-use cost)."""
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    runners = {"eager": (model, 0.0), "channels_last": (channels_last, 0.0)}
    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(torch.zeros(1, model.config["in_channels"], 256, 256))  # compiles: first-use cost
    runners["compile"] = (compiled, time.perf_counter() - start)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime is not installed: its row is skipped (pip install onnx onnxruntime)")
        return runners
    start = time.perf_counter()
    (folder / "model.onnx").write_bytes(export_graph(model,
                                                     in_channels=model.config["in_channels"]))
    runners["onnxruntime"] = (OnnxRuntimeModel(model, folder / "model.onnx"),
                              time.perf_counter() - start)
    return runners


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    print(environment(torch.device("cpu")))
    results = []
    for label, (kwargs, side) in ROWS.items():
        if args.models and not label.startswith(tuple(args.models)):
            continue
        torch.manual_seed(0)
        model = build_model(**kwargs, num_classes=1, in_channels=1).eval()
        image = synthetic_mammogram((side, side), np.random.default_rng(0))[0]
        # (H, W) -> (1, 1, H, W), normalised
        x = to_model_input(torch.from_numpy(image)[None, None], model.config)
        with tempfile.TemporaryDirectory() as folder, torch.no_grad():
            runners = paths_of(model, Path(folder))
            reference = model(x)
            times = {name: [] for name in runners}
            # the paths take turns, the order flipped each round: a busy neighbour slows all alike
            for round_index in range(args.rounds):
                order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
                for name in order:
                    runner = runners[name][0]
                    times[name].append(median_seconds(lambda: runner(x), device=torch.device("cpu"),
                                                      warmup=1, repeats=args.repeats))
            for name, (runner, first_use) in runners.items():
                logits = runner(x)
                row = dict(model=label, path=name, seconds=statistics.median(times[name]),
                           first_use_s=first_use,
                           max_abs_difference=float((logits - reference).abs().max()),
                           mask_pixels_differing=int(((logits > 0) != (reference > 0)).sum()))
                row["speedup"] = statistics.median(times["eager"]) / row["seconds"]
                results.append(row)
                print(f"{label:<42} {name:<14} {1000 * row['seconds']:8.1f} ms  "
                      f"x{row['speedup']:.2f} of eager  "
                      f"first use {row['first_use_s']:5.1f} s  "
                      f"max |diff| {row['max_abs_difference']:.1e}  "
                      f"mask pixels differing {row['mask_pixels_differing']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(environment=environment(torch.device("cpu")),
                                                   threads=args.threads, rows=results), indent=2))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", metavar="LABEL_PREFIX",
                        help="only rows starting with these")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds (median over rounds)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per round (median)")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
