"""Cost of each thesis model: parameters and FLOPs beside the thesis' own numbers (Tables 2 and 4, "#Params", "FLOPS").

FLOPs are counted by torch.utils.flop_counter at the training input size (one multiply-accumulate = 2 FLOPs, as that
counter and most papers define them; convolutions and matrix products only). The thesis' FLOPS column is smaller:
its numbers equal total multiply-accumulates / 2, i.e. our FLOPs / 4 (architecture notes §8: Unet-R34 3.91 vs 3.945,
UNet++-R34+scSE 9.20 vs 9.26, fusion BiT 115.8 vs 115.82). Both are printed so neither is mistaken for the other.
Models are built on the "meta" device: shapes only, no memory, no arithmetic, so the table takes seconds on a CPU.

    python benchmark.py                 # the table below
    python benchmark.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import build_model

# (label, build_model kwargs, input side, thesis #params in M, thesis FLOPS) for every row of Tables 2 and 4.
THESIS_ROWS = [
    ("Table 2 (A) proposed decoder, ResNet-34", dict(encoder="resnet34", decoder="fusion", num_classes=1), 256,
     89.62, 32.22),
    ("Table 2 (B) SMP Unet, ResNet-34", dict(encoder="resnet34", decoder="unet", num_classes=1), 256, 24.44, 3.945),
    ("Table 2 (C) SMP Unet++ (scSE), ResNet-34", dict(encoder="resnet34", decoder="unetplusplus", num_classes=1),
     256, 26.28, 9.26),
    ("Table 4 (A) proposed decoder, BiT-R50x1", dict(encoder="bit_r50x1", decoder="fusion", num_classes=21), 384,
     202.44, 115.82),
    # The thesis' 6.04 for this row fits no counting rule that fits the other rows (architecture notes §8).
    ("Table 4 (B) SMP Unet, BiT-R50x1", dict(encoder="bit_r50x1", decoder="unet", num_classes=21), 384, 32.51, 6.04),
]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 per multiply-accumulate) of one forward pass on an input of `input_shape`, on the model's device."""
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape, device=device))
    return counter.get_total_flops()


def model_costs(kwargs: dict, side: int, batch_size: int = 1) -> dict:
    """Parameters and FLOPs of build_model(**kwargs) at side x side, without allocating its weights."""
    with torch.device("meta"):
        model = build_model(**kwargs).eval()
    flops = count_flops(model, (batch_size, model.config["in_channels"], side, side))
    return dict(params=count_parameters(model), flops=flops, thesis_convention_flops=flops / 4)


def model_table() -> list[dict]:
    rows = []
    for label, kwargs, side, thesis_params_m, thesis_flops in THESIS_ROWS:
        costs = model_costs(kwargs, side)
        rows.append(dict(model=label, input=f"{side}x{side}", **costs, thesis_params_m=thesis_params_m,
                         thesis_flops=thesis_flops))
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the table to FILE as JSON")
    return parser


def main(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}")
    rows = model_table()
    print(f"{'model':<42} {'input':>8} {'params':>12} {'thesis':>8} {'GFLOPs':>8} {'GFLOPs/4':>9} {'thesis':>7}")
    for r in rows:
        print(f"{r['model']:<42} {r['input']:>8} {r['params'] / 1e6:>11.2f}M {r['thesis_params_m']:>7.2f}M "
              f"{r['flops'] / 1e9:>8.2f} {r['thesis_convention_flops'] / 1e9:>9.2f} {r['thesis_flops']:>7}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, models=rows), f, indent=2)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
