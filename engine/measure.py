"""Measuring: median wall time, CUDA-graph latency, parameters and FLOPs (benchmark.py, bench/).

    seconds = median_seconds(lambda: model(x), device=device, warmup=1, repeats=5)
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


def median_seconds(fn: Callable[[], object], *, device: torch.device, warmup: int,
                   repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup`, a GPU synchronised."""
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


def graph_latency(forward: Callable[[torch.Tensor], object], x: torch.Tensor, *,
                  device: torch.device, warmup: int, repeats: int) -> float:
    """forward(x)'s latency replayed as a CUDA graph: the GPU's time, without launch costs."""
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
    """FLOPs of a forward pass (2 per multiply-add; convolutions, matmuls) on the model's device."""
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape, device=device))
    return counter.get_total_flops()


def process_seconds() -> float:
    """Seconds since this process started (elsewhere than Linux: since this module's import)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # field 22: the start time, in clock ticks
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()
