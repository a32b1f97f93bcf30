"""The cost of each thesis model (Tables 2 and 4: "#Params", "FLOPS", "Inference time"). The cost
table: parameters and FLOPs beside the thesis'. The speed table (--speed): latency at batch 1,
forward and training throughput per precision. Both name the device; docs/speed.md has results.

    python benchmark.py                                   # the cost table (seconds)
    python benchmark.py --speed --device cpu --repeats 3  # + the speed table on this machine's CPU
    python benchmark.py --speed --device cuda --amp none bf16 --channels-last --json gpu.json
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from losses import build_loss
from model import build_model
from engine.cli import ArgumentParser, UsageError, check_writable_file, run_command
from engine.devices import autocast, environment, resolve_device
from engine.measure import count_flops, count_parameters, graph_latency, median_seconds
from readers.atomic import write_json

# (label, build_model kwargs, input side, thesis #params in M, thesis FLOPS, thesis V100 time in s)
THESIS_ROWS = [
    ("Table 2 (A) proposed decoder, ResNet-34",
     dict(encoder="resnet34", decoder="fusion", num_classes=1), 256, 89.62, 32.22, 0.0149),
    ("Table 2 (B) SMP Unet, ResNet-34",
     dict(encoder="resnet34", decoder="unet", num_classes=1), 256, 24.44, 3.945, 0.00249),
    ("Table 2 (C) SMP Unet++ (scSE), ResNet-34",
     dict(encoder="resnet34", decoder="unetplusplus", num_classes=1), 256, 26.28, 9.26, 0.005),
    ("Table 4 (A) proposed decoder, BiT-R50x1",
     dict(encoder="bit_r50x1", decoder="fusion", num_classes=21), 384, 202.44, 115.82, 0.152),
    # The thesis' 6.04 for this row fits no counting rule that fits the other rows.
    ("Table 4 (B) SMP Unet, BiT-R50x1",
     dict(encoder="bit_r50x1", decoder="unet", num_classes=21), 384, 32.51, 6.04, 0.0845),
]

PRECISION_NAMES = {"none": "fp32", "bf16": "bf16"}  # --amp value -> the name printed in the tables


def model_costs(kwargs: dict, side: int, batch_size: int = 1) -> dict:
    """Parameters and FLOPs of build_model(**kwargs) at side x side, built on the meta device."""
    with torch.device("meta"):
        model = build_model(**kwargs).eval()
    flops = count_flops(model, (batch_size, model.config["in_channels"], side, side))
    # The thesis' FLOPS column is multiply-accumulates / 2, i.e. our FLOPs (2 per MAC) / 4.
    return dict(params=count_parameters(model), flops=flops, thesis_convention_flops=flops / 4)


def matmul_tflops(device: torch.device, dtype: torch.dtype, *, n: int = 8192,
                  repeats: int = 20) -> float:
    """The card's measured dense matrix-multiply rate (TFLOP/s): the training step's ceiling."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = median_seconds(lambda: a @ b, device=device, warmup=3, repeats=repeats)
    return 2 * n**3 / seconds / 1e12


def speed_row(kwargs: dict, side: int, *, device: torch.device, precision: str, batch_size: int,
              channels_last: bool, compile_model: bool, warmup: int, repeats: int,
              forward_flops: int | None = None) -> dict:
    """Latency at batch 1, forward and training-step throughput at batch_size, for one model, and
    the seconds each phase took. The training step is train.py's (compile_model: with --compile);
    forward_flops, one image's (model_costs), is counted here unless given."""
    phases, clock = {}, time.perf_counter()

    def phase(name: str) -> None:  # the row's own cost by phase: what a cut run needs to know
        nonlocal clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        phases[name], clock = time.perf_counter() - clock, time.perf_counter()

    with torch.device(device):  # initialised on the card: 200M parameters take seconds on a CPU
        model = build_model(**kwargs)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    runner = torch.compile(model) if compile_model else model
    if precision not in PRECISION_NAMES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got "
                         f"{precision!r}")
    in_channels, num_classes = model.config["in_channels"], model.config["num_classes"]

    def batch(n):
        return torch.randn(n, in_channels, side, side,
                           device=device).to(memory_format=memory_format)

    model.eval()
    one, many = batch(1), batch(batch_size)

    def forward(x):  # autocast's cache off: a CUDA graph must not capture a cast made outside it
        with torch.no_grad(), autocast(device, precision, cache_enabled=False):
            runner(x)

    phase("build")
    latency = None  # compiled: not at batch 1, each new shape would cost another compilation
    if not compile_model:
        latency = median_seconds(lambda: forward(one), device=device, warmup=warmup,
                                 repeats=repeats)
        phase("latency")
    # As a CUDA graph: the card's own time, without Python's cost of launching each kernel, which
    # bounds eager batch-1 latency on a fast card
    graph_seconds = None
    if device.type == "cuda" and not compile_model:
        try:
            graph_seconds = graph_latency(forward, one, device=device, warmup=warmup,
                                          repeats=repeats)
        except RuntimeError as error:  # a forward that cannot be captured: say so and time the rest
            print(f"{kwargs}: CUDA graph capture failed: {str(error).splitlines()[0]}", flush=True)
    phase("graph")
    forward_seconds = median_seconds(lambda: forward(many), device=device, warmup=warmup,
                                     repeats=repeats)
    phase("forward")

    model.train()
    loss = "jaccard+focal_tversky" if num_classes == 1 else "ce+focal_tversky"  # Table 1
    criterion = build_loss(loss, num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True,
                                  fused=True)  # train.py's
    target = torch.randint(0, max(2, num_classes), (batch_size, side, side), device=device)

    def train_step():
        with autocast(device, precision):
            loss_value = criterion(runner(many), target)  # train.py's: the model, Table 1's loss
        loss_value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":  # the peak of training, not of the first step's cuDNN search
        train_step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = median_seconds(train_step, device=device, warmup=warmup, repeats=repeats)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    phase("training")
    if forward_flops is None:
        forward_flops = model_costs(kwargs, side)["flops"]
    train_flops = 3 * batch_size * forward_flops  # backward ~ 2x forward
    return dict(precision=PRECISION_NAMES[precision], latency_s=latency, phase_seconds=phases,
                graph_latency_s=graph_seconds, forward_images_per_s=batch_size / forward_seconds,
                train_images_per_s=batch_size / step_seconds,
                train_tflops=train_flops / step_seconds / 1e12,
                peak_train_memory_gib=None if peak is None else peak / 2**30)


# --------------------------------------------------------------------------------------------- main
def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="benchmark.py", description=__doc__)
    add = parser.add_argument
    add("--speed", action="store_true", help="also time every model (the speed table)")
    add("--device", default="auto",
        help="auto (cuda when visible, else cpu), cpu, cuda or cuda:N (default: auto)")
    # none is fp32, which cuDNN runs as TF32 on Ampere and newer GPUs (its default and train.py's)
    add("--amp", nargs="+", default=None, choices=list(PRECISION_NAMES),
        help="precisions to time: none (fp32) and/or bf16 (torch.autocast with bfloat16); default: "
        "both on a GPU, none on a CPU, where bf16 convolutions are many times slower")
    add("--channels-last", action="store_true", help="channels_last memory format (faster on GPUs)")
    add("--compile", action="store_true", help="torch.compile each model before timing")
    add("--batch-size", type=int, default=8,
        help="batch for throughput and the training step (default: 8)")
    add("--warmup", type=int, default=None,
        help="untimed runs before timing (default: 10 GPU, 1 CPU)")
    add("--repeats", type=int, default=None,
        help="timed runs, median reported (default: 50 GPU, 5 CPU)")
    add("--models", nargs="+", default=None, metavar="LABEL_PREFIX",
        help="only rows whose label starts with one of these, e.g. 'Table 2 (A)'")
    add("--json", metavar="FILE", help="also write every table to FILE as JSON (rewritten after "
        "every row, so a later failure keeps what was measured)")
    return parser


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    for flag, value, least in (("--batch-size", args.batch_size, 1),
                               ("--warmup", args.warmup, 0), ("--repeats", args.repeats, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag} {value}: must be at least {least}")
    rows = [r for r in THESIS_ROWS if args.models is None or r[0].startswith(tuple(args.models))]
    if not rows:
        raise UsageError(f"--models {' '.join(args.models)}: no row starts with that; "
                         f"the rows are: " + "; ".join(r[0] for r in THESIS_ROWS))
    if args.json:
        check_writable_file(args.json, "--json")
    results = dict(environment=environment(device), models=[], speed=[])
    print(results["environment"])

    print(f"\n{'model':<42} {'input':>8} {'params':>10} {'thesis':>8} {'GFLOPs':>8} "
          f"{'GFLOPs/4':>9} {'thesis':>7}")
    for label, kwargs, side, thesis_params_m, thesis_flops, _ in rows:
        c = model_costs(kwargs, side)
        results["models"].append(dict(model=label, input=side, **c,
                                      thesis_params_m=thesis_params_m, thesis_flops=thesis_flops))
        print(f"{label:<42} {f'{side}x{side}':>8} {c['params'] / 1e6:>9.2f}M "
              f"{thesis_params_m:>7.2f}M {c['flops'] / 1e9:>8.2f} "
              f"{c['thesis_convention_flops'] / 1e9:>9.2f} {thesis_flops:>7}")
    if args.speed:
        speed_table(args, rows, device, results)
    if args.json:
        write_json(args.json, results)


def speed_table(args: argparse.Namespace, rows: list, device: torch.device, results: dict) -> None:
    """The speed table: every row at every precision; a row that does not fit the card is named."""
    on_gpu = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
    repeats = args.repeats if args.repeats is not None else (50 if on_gpu else 5)
    precisions = args.amp or (["none", "bf16"] if on_gpu else ["none"])
    # Every input of a row has one shape: cuDNN may time its algorithms once (train.py does too).
    torch.backends.cudnn.benchmark = True
    ceiling = matmul_tflops(device, torch.bfloat16) if on_gpu else None
    results["bf16_matmul_tflops"] = ceiling
    print(f"\nspeed: batch {args.batch_size}, median of {repeats} after {warmup} warm-up, "
          f"channels_last={args.channels_last}, compile={args.compile}"
          + (f"; bf16 matmul {ceiling:.0f} TFLOP/s" if ceiling else ""))
    print(f"{'model':<42} {'prec':>5} {'latency ms':>10} {'graph ms':>8} {'thesis ms':>9} "
          f"{'fwd img/s':>10} {'train img/s':>11} {'train TFLOP/s':>13} {'peak GiB':>8}")
    flops = {row["model"]: row["flops"] for row in results["models"]}  # counted once, in main
    for label, kwargs, side, _, _, thesis_seconds in rows:
        for precision in precisions:
            try:
                r = speed_row(kwargs, side, device=device, precision=precision,
                              batch_size=args.batch_size, channels_last=args.channels_last,
                              compile_model=args.compile, warmup=warmup, repeats=repeats,
                              forward_flops=flops[label])
            except torch.OutOfMemoryError:  # a big row on a small card: say so and time the others
                r = None
            if r is None:  # outside the except block, whose traceback holds the row's tensors
                torch.cuda.empty_cache()
                results["speed"].append(dict(model=label, input=side,
                                             precision=PRECISION_NAMES[precision],
                                             out_of_memory=True))
                print(f"{label:<42} {PRECISION_NAMES[precision]:>5} out of memory at batch "
                      f"{args.batch_size}; try a smaller --batch-size", flush=True)
            else:
                results["speed"].append(dict(model=label, input=side,
                                             thesis_latency_s=thesis_seconds, **r))
                peak = (f"{r['peak_train_memory_gib']:.1f}"
                        if r["peak_train_memory_gib"] is not None else "-")
                share = (f" ({r['train_tflops'] / ceiling:.0%})"
                         if ceiling and precision == "bf16" else "")
                graph, latency = (f"{r[key] * 1e3:.1f}" if r[key] is not None else "-"
                                  for key in ("graph_latency_s", "latency_s"))
                print(f"{label:<42} {r['precision']:>5} {latency:>10} {graph:>8} "
                      f"{thesis_seconds * 1e3:>9.1f} {r['forward_images_per_s']:>10.1f} "
                      f"{r['train_images_per_s']:>11.1f} {r['train_tflops']:>7.3f}{share:>6} "
                      f"{peak:>8}", flush=True)
                print("    the row took " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds
                                                      in r["phase_seconds"].items()), flush=True)
            if args.json:
                write_json(args.json, results)


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(run_command("benchmark.py", lambda: main(arguments), (UsageError,)))
