"""Our baseline U-Net (thesis Table 2, row B) against segmentation_models_pytorch's Unet on the same machine.

Both models hold the same weights (SMP's state dict loaded into ours), and are timed alternately, forward at batch 1
and the training step (forward, backward, AdamW) at --batch-size, so that drifting clocks or a busy neighbour hit
both alike; the order flips every round. On a GPU the batch-1 forward is also timed replayed as a CUDA graph, the
card's own time without Python's launch cost. Ours must not be slower. segmentation_models_pytorch is needed by
this script only (requirements-dev.txt).

    python bench/peer_smp.py [--device cuda] [--amp bf16] [--rounds 5] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from checkpoints import state_dict_from_smp  # noqa: E402
from model import build_model  # noqa: E402
from utils import environment, graph_latency, median_seconds, resolve_device  # noqa: E402


def main(args: argparse.Namespace) -> None:
    import segmentation_models_pytorch as smp

    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes, as in benchmark.py
    theirs = smp.Unet("resnet34", encoder_weights=None, classes=1).to(device)
    ours = build_model("resnet34", "unet", num_classes=1).to(device)
    ours.load_state_dict(state_dict_from_smp(theirs.state_dict()))
    with torch.no_grad():  # the same network, or the timings compare nothing
        probe = torch.randn(2, 3, args.size, args.size, device=device)
        difference = (ours.eval()(probe) - theirs.eval()(probe)).abs().max().item()
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    one = torch.randn(1, 3, args.size, args.size, device=device)
    batch = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    target = torch.randint(0, 2, (args.batch_size, 1, args.size, args.size), device=device).float()

    def forward(model, x=one):  # autocast's cache off, as CUDA graph capture needs
        model.eval()
        with torch.no_grad(), torch.autocast(**autocast, cache_enabled=False):
            model(x)

    def make_train_step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True)

        def step():
            model.train()
            with torch.autocast(**autocast):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch).float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    steps = {"ours": make_train_step(ours), "smp": make_train_step(theirs)}
    models = {"ours": ours, "smp": theirs}
    measures = ("forward_s", "train_step_s") + (("graph_forward_s",) if device.type == "cuda" else ())
    timings = {f"{name}_{what}": [] for name in models for what in measures}
    for round_index in range(args.rounds):  # alternate: ours, smp, smp, ours, ours, smp, ...
        for name in (["ours", "smp"] if round_index % 2 == 0 else ["smp", "ours"]):
            model = models[name]
            timings[f"{name}_forward_s"].append(
                median_seconds(lambda: forward(model), device=device, warmup=1, repeats=args.repeats))
            timings[f"{name}_train_step_s"].append(
                median_seconds(steps[name], device=device, warmup=1, repeats=args.repeats))
            if device.type == "cuda":
                timings[f"{name}_graph_forward_s"].append(graph_latency(
                    lambda x: forward(model, x), one, device=device, warmup=1, repeats=args.repeats))
    result = {k: statistics.median(v) for k, v in timings.items()}
    result.update(environment=environment(device), size=args.size, batch_size=args.batch_size, amp=args.amp,
                  smp_version=smp.__version__, max_abs_output_difference=difference)
    print(result["environment"], f"| SMP {smp.__version__} | {args.size}x{args.size}, amp {args.amp} | outputs "
          f"differ by at most {difference:.2e} (fp32)")
    rows = [("forward", "ms at batch 1"), ("train_step", f"ms per step at batch {args.batch_size}")]
    if device.type == "cuda":
        rows.insert(1, ("graph_forward", "ms at batch 1, replayed as a CUDA graph"))
    for what, unit in rows:
        a, b = result[f"ours_{what}_s"] * 1e3, result[f"smp_{what}_s"] * 1e3
        print(f"{what:<13} ours {a:9.2f}  smp {b:9.2f}  {unit}  (ours / smp = {a / b:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when visible, else cpu), cpu, cuda or cuda:N "
                        "(default: auto)")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast precision")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (thesis: 256)")
    parser.add_argument("--batch-size", type=int, default=4, help="batch of the training step")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median over rounds is shown")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per round (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
