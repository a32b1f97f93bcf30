"""Where a training step's time goes: torch.profiler over a few of train.py's steps of a thesis
model (model, Table 1's loss, AdamW with amsgrad), kernels grouped by kind: what is memory-bound.

    python bench/profile_step.py [--model fusion-r34|fusion-bit] [--amp bf16] [--compile]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from losses import build_loss  # noqa: E402
from model import build_model  # noqa: E402
from engine.devices import autocast, environment, resolve_device  # noqa: E402

MODELS = {"fusion-r34": (dict(encoder="resnet34", decoder="fusion", num_classes=1), 256,
                         "jaccard+focal_tversky"),
          "fusion-bit": (dict(encoder="bit_r50x1", decoder="fusion", num_classes=21), 384,
                         "ce+focal_tversky")}
KINDS = (("convolution", ("conv", "gemm", "cutlass", "sm80_", "sm90_", "xmma", "implicit")),
         ("batch norm", ("batch_norm", "bn_")), ("group norm", ("group_norm", "groupnorm")),
         ("elementwise", ("elementwise", "vectorized", "unrolled", "fused")),
         ("upsample", ("upsample", "interp")),
         ("reduction", ("reduce",)), ("copy", ("copy", "memcpy", "memset")),
         ("optimizer", ("adam",)))


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KINDS if any(mark in lowered for mark in marks)), "other")


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    kwargs, side, loss = MODELS[args.model]
    side = args.image_size or side
    widths = {"decoder_channels": (16,) * 5} if args.narrow else {}  # the dry run's toy size
    model = build_model(**kwargs, **widths).to(device, memory_format=torch.channels_last)
    criterion = build_loss(loss, kwargs["num_classes"])
    network = torch.compile(model) if args.compile else model  # as train.py --compile
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True, fused=True)  # train.py's
    images = torch.randn(args.batch_size, 3, side, side,
                         device=device).to(memory_format=torch.channels_last)
    classes = max(2, kwargs["num_classes"])
    masks = torch.randint(0, classes, (args.batch_size, side, side), device=device)

    def train_step():
        with autocast(device, args.amp):
            loss_value = criterion(network(images), masks)  # train.py's: the model, Table 1's loss
        loss_value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: cuDNN's algorithm search, compilation
        train_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(args.steps):
            train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = [e for e in profiler.key_averages()
              if e.device_type.name == ("CUDA" if device.type == "cuda" else "CPU")]
    times = Counter()
    for event in events:
        on_device = (event.self_device_time_total if device.type == "cuda"
                     else event.self_cpu_time_total)
        times[kind_of(event.key)] += on_device
    total = sum(times.values())
    print(environment(device),
          f"| {args.model}, batch {args.batch_size}, {args.amp}, compile={args.compile}")
    print(f"per step: {total / args.steps / 1e3:.2f} ms of kernels")
    for kind, microseconds in times.most_common():
        print(f"  {kind:<12} {100 * microseconds / total:5.1f}%  "
              f"{microseconds / args.steps / 1e3:8.2f} ms")
    print(profiler.key_averages().table(sort_by="self_cuda_time_total" if device.type == "cuda" else
                                        "self_cpu_time_total", row_limit=args.rows))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="fusion-r34")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["none", "bf16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int,
                        help="input side (default: the thesis' for the model)")
    parser.add_argument("--narrow", action="store_true", help="a narrow decoder, for a dry run")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25, help="kernels listed")
    parser.add_argument("--compile", action="store_true",
                        help="as train.py --compile: the network compiled")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
