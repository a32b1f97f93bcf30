"""Our baseline U-Nets (Table 2 and 4, row B) and BiT encoder against segmentation_models_pytorch's
and timm's on the same machine, holding the same weights, timed alternately: ours must not be
slower. Needs SMP and timm (requirements-dev.txt); results in docs/speed.md.

    python bench/peer_smp.py [--device cuda] [--amp bf16] [--models resnet34 bit] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from engine.checkpoints import state_dict_from_smp, state_dict_from_timm_bit  # noqa: E402
from model import ResNetV2Encoder, build_model  # noqa: E402
from engine.devices import environment, resolve_device
from engine.measure import graph_latency, median_seconds  # noqa: E402


def build_pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """(ours, theirs, classes) holding the same weights; classes 0: an encoder."""
    import segmentation_models_pytorch as smp
    import timm

    if name == "Unet, ResNet-34":
        theirs = smp.Unet("resnet34", encoder_weights=None, classes=1)
        ours, classes = build_model("resnet34", "unet", num_classes=1), 1
    elif name == "BiT-R50x1 encoder":
        theirs, ours, classes = (timm.create_model("resnetv2_50x1_bit", features_only=True),
                                 ResNetV2Encoder(3), 0)
    else:  # "Unet, BiT-R50x1"
        theirs = smp.Unet("tu-resnetv2_50x1_bit", encoder_weights=None, classes=21)
        ours, classes = build_model("bit_r50x1", "unet", num_classes=21), 21
    # theirs loaded into ours, strictly
    ours.load_state_dict(state_dict_from_timm_bit(state_dict_from_smp(theirs.state_dict())))
    return ours, theirs, classes


def output_difference(ours, theirs, side: int, device: torch.device) -> float:
    """The largest difference of the two outputs on one input: the same network, or the timings
    compare nothing."""
    x = torch.randn(1, 3, side, side, device=device)
    with torch.no_grad():
        a, b = ours.eval()(x), theirs.eval()(x)
    # an encoder returns its feature maps: ours the input first, then the five that timm's
    # features_only returns; a map of another shape is an error here, not a pair left out
    pairs = list(zip(a[-len(b):], b, strict=True)) if isinstance(a, list) else [(a, b)]
    return max(float((p - q).abs().max()) for p, q in pairs)


def loss_of(out, classes: int, target: torch.Tensor) -> torch.Tensor:
    """BCE for 1 class, cross-entropy for more; for an encoder, its five feature maps' means."""
    if classes == 0:
        return sum(f.float().mean() for f in out[-5:])
    if classes == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(out.float(),
                                                                    target[:, None].float())
    return torch.nn.functional.cross_entropy(out.float(), target)


def time_pair(ours, theirs, classes: int, side: int, args: argparse.Namespace,
              device: torch.device) -> dict:
    """Median seconds over rounds of each measure, for both models; "rounds" keeps each round's."""
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    one = torch.randn(1, 3, side, side, device=device)
    batch = torch.randn(args.batch_size, 3, side, side, device=device)
    target = torch.randint(0, max(classes, 2), (args.batch_size, side, side), device=device)

    def forward(model, x=one):  # autocast's cache off, as CUDA graph capture needs
        model.eval()
        with torch.no_grad(), torch.autocast(**autocast, cache_enabled=False):
            model(x)

    def make_train_step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True)

        def step():
            model.train()
            with torch.autocast(**autocast):
                loss = loss_of(model(batch), classes, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    steps = {"ours": make_train_step(ours), "theirs": make_train_step(theirs)}
    models = {"ours": ours, "theirs": theirs}
    measures = (("forward_s", "train_step_s")
                + (("graph_forward_s",) if device.type == "cuda" else ()))
    timings = {f"{name}_{what}": [] for name in models for what in measures}
    # ours, theirs, theirs, ours, ...: drifting clocks or a busy neighbour hit both alike
    for round_index in range(args.rounds):
        for name in (["ours", "theirs"] if round_index % 2 == 0 else ["theirs", "ours"]):
            model = models[name]
            timings[f"{name}_forward_s"].append(
                median_seconds(lambda: forward(model), device=device, warmup=1,
                               repeats=args.repeats))
            timings[f"{name}_train_step_s"].append(
                median_seconds(steps[name], device=device, warmup=1, repeats=args.repeats))
            if device.type == "cuda":  # the card's own time, without Python's launch cost
                timings[f"{name}_graph_forward_s"].append(graph_latency(
                    lambda x: forward(model, x), one, device=device, warmup=1,
                    repeats=args.repeats))
    return {**{k: statistics.median(v) for k, v in timings.items()}, "rounds": timings}


# --models name -> (pair, its thesis input side): Table 2 at 256x256, Table 4 at 384x384
PAIRS = {"resnet34": [("Unet, ResNet-34", 256)],
         "bit": [("BiT-R50x1 encoder", 384), ("Unet, BiT-R50x1", 384)]}


def main(args: argparse.Namespace) -> None:
    import segmentation_models_pytorch as smp
    import timm

    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes, as in benchmark.py
    result = dict(environment=environment(device), batch_size=args.batch_size, amp=args.amp,
                  smp_version=smp.__version__, timm_version=timm.__version__, rows=[])
    print(result["environment"],
          f"| SMP {smp.__version__}, timm {timm.__version__} | amp {args.amp}")
    units = [("forward", "ms at batch 1"),
             ("train_step", f"ms per step at batch {args.batch_size}")]
    if device.type == "cuda":
        units.insert(1, ("graph_forward", "ms at batch 1, replayed as a CUDA graph"))
    for label, side in [pair for name in args.models for pair in PAIRS[name]]:
        side = args.size or side
        ours, theirs, classes = build_pair(label)
        ours, theirs = ours.to(device), theirs.to(device)
        difference = output_difference(ours, theirs, side, device)
        row = time_pair(ours, theirs, classes, side, args, device)
        result["rows"].append(dict(pair=label, size=side, max_abs_output_difference=difference,
                                   **row))
        print(f"{label}, {side}x{side} (theirs: {'timm' if classes == 0 else 'SMP'}; outputs "
              f"differ by at most {difference:.1e})")
        for what, unit in units:
            a, b = row[f"ours_{what}_s"] * 1e3, row[f"theirs_{what}_s"] * 1e3
            print(f"  {what:<13} ours {a:9.2f}  theirs {b:9.2f}  {unit}  "
                  f"(ours / theirs = {a / b:.3f})")
        del ours, theirs
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when visible, else cpu), "
                        "cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"],
                        help="autocast precision")
    parser.add_argument("--models", nargs="+", default=["resnet34", "bit"], choices=list(PAIRS),
                        help="pairs to time: resnet34 (Unet) and/or bit (encoder, Unet) "
                        "(default: both)")
    parser.add_argument("--size", type=int, default=None, help="input side in pixels for every "
                        "pair (default: the thesis' side of each, 256 for ResNet-34, 384 for BiT)")
    parser.add_argument("--batch-size", type=int, default=4, help="batch of the training step")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds; the median over rounds is shown")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per round (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
