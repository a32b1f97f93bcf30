"""Cost of each thesis model (Tables 2 and 4: "#Params", "FLOPS", "Inference time") and what training will cost.

Three tables, each printed with the device name and the versions, so numbers from different machines are never mixed:
  1. models: parameters and FLOPs beside the thesis' own numbers. FLOPs are counted by torch.utils.flop_counter at the
     training input size (1 multiply-accumulate = 2 FLOPs; convolutions and matrix products only). The thesis' FLOPS
     column is smaller: it equals multiply-accumulates / 2 = our FLOPs / 4 (Unet-R34 3.91 vs 3.945, UNet++-R34+scSE
     9.20 vs 9.26, fusion BiT 115.77 vs 115.82), so both are printed. Built on the "meta" device: seconds, no memory.
  2. speed (--speed): forward latency at batch 1 (the thesis' "inference time"), forward throughput at --batch-size,
     and the training step (forward, backward, AdamW) in images/s, each the median of --repeats timed runs after
     warm-up, per precision (--amp none bf16, as train.py spells them; none = fp32, which cuDNN runs as TF32 on
     Ampere and newer GPUs, its default and train.py's), with peak memory on CUDA and the achieved fraction of the
     card's measured bf16 matrix-multiply rate. On a GPU, the batch-1 forward is also timed replayed as a CUDA
     graph ("graph ms"): the card's own time, without the cost of launching each kernel from Python, which is what
     bounds eager batch-1 latency on a fast card.
  3. data (--data): images/s of the cbis, mias and synthetic pipelines, cold (decoding) and from the cache
     (bench/bench_data.py), so a user sees whether loading or compute bounds training.

    python benchmark.py                                   # table 1 (seconds)
    python benchmark.py --speed --device cpu --repeats 3  # + table 2 on this machine's CPU
    python benchmark.py --speed --device cuda --amp none bf16 --channels-last --json gpu.json
The whole GPU measurement, with an AMP training smoke run, is bench/gpu.sh. bench/peer_smp.py compares the baseline
U-Net with segmentation_models_pytorch's on the same machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import build_model

# (label, build_model kwargs, input side, thesis #params in M, thesis FLOPS, thesis V100 inference time in s)
THESIS_ROWS = [
    ("Table 2 (A) proposed decoder, ResNet-34", dict(encoder="resnet34", decoder="fusion", num_classes=1), 256,
     89.62, 32.22, 0.0149),
    ("Table 2 (B) SMP Unet, ResNet-34", dict(encoder="resnet34", decoder="unet", num_classes=1), 256, 24.44, 3.945,
     0.00249),
    ("Table 2 (C) SMP Unet++ (scSE), ResNet-34", dict(encoder="resnet34", decoder="unetplusplus", num_classes=1),
     256, 26.28, 9.26, 0.005),
    ("Table 4 (A) proposed decoder, BiT-R50x1", dict(encoder="bit_r50x1", decoder="fusion", num_classes=21), 384,
     202.44, 115.82, 0.152),
    # The thesis' 6.04 for this row fits no counting rule that fits the other rows.
    ("Table 4 (B) SMP Unet, BiT-R50x1", dict(encoder="bit_r50x1", decoder="unet", num_classes=21), 384, 32.51, 6.04,
     0.0845),
]

PRECISION_NAMES = {"none": "fp32", "bf16": "bf16"}  # --amp value -> the name printed in the tables


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


# ------------------------------------------------------------------------------------------------------ timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, *, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs, synchronising the GPU around each run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_tflops(device: torch.device, dtype: torch.dtype, *, n: int = 8192, repeats: int = 20) -> float:
    """The card's measured dense matrix-multiply rate (TFLOP/s), the ceiling each model's training step is held to."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = median_seconds(lambda: a @ b, device=device, warmup=3, repeats=repeats)
    return 2 * n**3 / seconds / 1e12


def graph_latency(forward, x: torch.Tensor, *, device: torch.device, warmup: int, repeats: int) -> float:
    """Latency of forward(x) captured once as a CUDA graph and replayed: the GPU's own time for the batch, without
    the per-kernel cost of launching from Python, which bounds eager batch-1 latency on a fast card."""
    side_stream = torch.cuda.Stream(device)
    side_stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side_stream):  # capture wants its warm-up off the default stream
        for _ in range(3):
            forward(x)
    torch.cuda.current_stream(device).wait_stream(side_stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward(x)
    return median_seconds(graph.replay, device=device, warmup=warmup, repeats=repeats)


def speed_row(kwargs: dict, side: int, *, device: torch.device, precision: str, batch_size: int, channels_last: bool,
              compile_model: bool, warmup: int, repeats: int) -> dict:
    """Latency at batch 1, forward throughput and training-step throughput at batch_size for one model."""
    model = build_model(**kwargs).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    runner = torch.compile(model) if compile_model else model
    if precision not in PRECISION_NAMES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got {precision!r}")
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    in_channels = model.config["in_channels"]

    def batch(n):
        return torch.randn(n, in_channels, side, side, device=device).to(memory_format=memory_format)

    model.eval()
    one, many = batch(1), batch(batch_size)

    def forward(x):  # autocast's weight cache off: a CUDA graph must not capture a cast made outside it
        with torch.no_grad(), torch.autocast(**autocast, cache_enabled=False):
            runner(x)

    latency = median_seconds(lambda: forward(one), device=device, warmup=warmup, repeats=repeats)
    graph_seconds = None
    if device.type == "cuda" and not compile_model:
        try:
            graph_seconds = graph_latency(forward, one, device=device, warmup=warmup, repeats=repeats)
        except RuntimeError as error:  # a forward that cannot be captured: say so and time the rest
            print(f"{kwargs}: CUDA graph capture failed: {str(error).splitlines()[0]}", flush=True)
    forward_seconds = median_seconds(lambda: forward(many), device=device, warmup=warmup, repeats=repeats)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True)  # thesis Table 1's optimiser
    target = torch.randint(0, 2, (batch_size, model.config["num_classes"], side, side), device=device).float()

    def train_step():
        with torch.autocast(**autocast):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(runner(many).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":  # peak memory of training itself, not of the first step's search for cuDNN algorithms
        train_step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = median_seconds(train_step, device=device, warmup=warmup, repeats=repeats)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    train_flops = 3 * count_flops(model, (batch_size, in_channels, side, side))  # backward ~ 2x forward
    return dict(precision=PRECISION_NAMES[precision], latency_s=latency, graph_latency_s=graph_seconds,
                forward_images_per_s=batch_size / forward_seconds, train_images_per_s=batch_size / step_seconds,
                train_tflops=train_flops / step_seconds / 1e12,
                peak_train_memory_gib=None if peak is None else peak / 2**30)


# ------------------------------------------------------------------------------------------------------ main
def environment(device: torch.device) -> str:
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed", action="store_true", help="also time every model (table 2)")
    parser.add_argument("--data", action="store_true", help="also time the data pipelines (table 3)")
    parser.add_argument("--device", default="auto", help="auto (cuda when visible, else cpu), cpu, cuda or cuda:N "
                        "(default: auto)")
    parser.add_argument("--amp", nargs="+", default=None, choices=["none", "bf16"],
                        help="precisions to time: none (fp32) and/or bf16 (torch.autocast with bfloat16); default: both "
                             "on a GPU, none on a CPU, where bf16 convolutions are many times slower")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster on GPUs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model before timing")
    parser.add_argument("--batch-size", type=int, default=8, help="batch for throughput and the training step")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before timing (default: 10 GPU, 1 CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs, median reported (default: 50 GPU, 5 CPU)")
    parser.add_argument("--models", nargs="+", default=None, metavar="LABEL_PREFIX",
                        help="only rows whose label starts with one of these, e.g. 'Table 2 (A)'")
    parser.add_argument("--json", metavar="FILE", help="also write every table to FILE as JSON")
    return parser


def resolve_device(name: str | None) -> torch.device:
    """--device auto (or None), cpu, cuda or cuda:N -> torch.device, for every script; ValueError with the line to
    show otherwise."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    return device


def write_json(path: str | None, results: dict) -> None:
    if path:  # rewritten after every row, so a later failure keeps what was measured
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


def main(args: argparse.Namespace) -> None:
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise SystemExit(f"benchmark.py: {error}") from None
    rows = [r for r in THESIS_ROWS if args.models is None or r[0].startswith(tuple(args.models))]
    results = dict(environment=environment(device), models=[], speed=[], data=None)
    print(results["environment"])

    print(f"\n{'model':<42} {'input':>8} {'params':>10} {'thesis':>8} {'GFLOPs':>8} {'GFLOPs/4':>9} {'thesis':>7}")
    for label, kwargs, side, thesis_params_m, thesis_flops, _ in rows:
        c = model_costs(kwargs, side)
        results["models"].append(dict(model=label, input=side, **c, thesis_params_m=thesis_params_m,
                                      thesis_flops=thesis_flops))
        print(f"{label:<42} {f'{side}x{side}':>8} {c['params'] / 1e6:>9.2f}M {thesis_params_m:>7.2f}M "
              f"{c['flops'] / 1e9:>8.2f} {c['thesis_convention_flops'] / 1e9:>9.2f} {thesis_flops:>7}")

    if args.speed:
        on_gpu = device.type == "cuda"
        warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
        repeats = args.repeats if args.repeats is not None else (50 if on_gpu else 5)
        precisions = args.amp or (["none", "bf16"] if on_gpu else ["none"])
        # Every input of a row has one shape, so cuDNN may time its algorithms once and keep the fastest (train.py too).
        torch.backends.cudnn.benchmark = True
        ceiling = matmul_tflops(device, torch.bfloat16) if on_gpu else None
        results["bf16_matmul_tflops"] = ceiling
        print(f"\nspeed: batch {args.batch_size}, median of {repeats} after {warmup} warm-up, channels_last="
              f"{args.channels_last}, compile={args.compile}"
              + (f"; bf16 matmul {ceiling:.0f} TFLOP/s" if ceiling else ""))
        print(f"{'model':<42} {'prec':>5} {'latency ms':>10} {'graph ms':>8} {'thesis ms':>9} {'fwd img/s':>10} "
              f"{'train img/s':>11} {'train TFLOP/s':>13} {'peak GiB':>8}")
        for label, kwargs, side, _, _, thesis_seconds in rows:
            for precision in precisions:
                try:
                    r = speed_row(kwargs, side, device=device, precision=precision, batch_size=args.batch_size,
                                  channels_last=args.channels_last, compile_model=args.compile, warmup=warmup,
                                  repeats=repeats)
                except torch.OutOfMemoryError:  # a big row on a small card: say so and time the others
                    r = None
                if r is None:  # outside the except block, whose traceback holds the row's tensors
                    torch.cuda.empty_cache()
                    results["speed"].append(dict(model=label, input=side, precision=PRECISION_NAMES[precision],
                                                 out_of_memory=True))
                    write_json(args.json, results)
                    print(f"{label:<42} {PRECISION_NAMES[precision]:>5} out of memory at batch {args.batch_size}; "
                          "try a smaller --batch-size", flush=True)
                    continue
                results["speed"].append(dict(model=label, input=side, thesis_latency_s=thesis_seconds, **r))
                write_json(args.json, results)
                peak = f"{r['peak_train_memory_gib']:.1f}" if r["peak_train_memory_gib"] is not None else "-"
                share = f" ({r['train_tflops'] / ceiling:.0%})" if ceiling and precision == "bf16" else ""
                graph = f"{r['graph_latency_s'] * 1e3:.1f}" if r["graph_latency_s"] is not None else "-"
                print(f"{label:<42} {r['precision']:>5} {r['latency_s'] * 1e3:>10.1f} {graph:>8} "
                      f"{thesis_seconds * 1e3:>9.1f} "
                      f"{r['forward_images_per_s']:>10.1f} {r['train_images_per_s']:>11.1f} "
                      f"{r['train_tflops']:>7.3f}{share:>6} {peak:>8}", flush=True)

    if args.data:
        from bench.bench_data import print_table, run  # decoding needs numpy/pydicom: loaded only here

        print()
        results["data"] = run()
        print_table(results["data"])
    write_json(args.json, results)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
