"""Measuring: median wall time, CUDA-graph latency, parameters and FLOPs (benchmark.py, evaluate.py, bench/).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], *, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs (at least 1) after `warmup` runs, synchronising a GPU around
    each run."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
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


def graph_latency(forward: Callable[[torch.Tensor], object], x: torch.Tensor, *, device: torch.device, warmup: int,
                  repeats: int) -> float:
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 per multiply-accumulate; convolutions and matrix products) of one forward pass on an input of
    `input_shape`, on the model's device ("meta" counts without allocating anything)."""
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape, device=device))
    return counter.get_total_flops()


def process_seconds() -> float:
    """Seconds since this process started (Linux's /proc; elsewhere since this module was imported)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in clock ticks
            return float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()
