"""Devices and precision (--device, --amp, torchrun's variables) and the record of where a run ran.

    rank, world, device = init_distributed(resolve_device("auto"))
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from .cli import UsageError

# --amp, as every script spells it
AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    """--device auto (or None), cpu, cuda or cuda:N -> torch.device; else UsageError."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    return device


def autocast(device: torch.device, amp: str, **options) -> torch.autocast:
    """torch.autocast for --amp none | bf16 | fp16 (none: disabled, fp32)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp], enabled=amp != "none", **options)


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_processes() -> int:
    """How many processes torchrun started for this run (its WORLD_SIZE), 1 without torchrun."""
    return int(os.environ["WORLD_SIZE"]) if under_torchrun() else 1


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's variables, the process group initialised;
    (0, 1, device) in a single process."""
    torchrun = under_torchrun()
    rank, world, local_rank = (int(os.environ.get(k, 0))
                               for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        # no index: the process' LOCAL_RANK GPU, for set_device and DDP
        device = device if device.index is not None else torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # every batch of a run has one shape: cuDNN times its algorithms once, keeps the fastest
        torch.backends.cudnn.benchmark = True
    if not torchrun:
        return 0, 1, device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def check_device_flags(device: torch.device, flag: str, *, amp: str, sync_bn: bool,
                       data_parallel: bool) -> None:
    """The flag combinations a device cannot run, each refused in one line before any work."""
    torchrun = "RANK" in os.environ
    problems = [
        (amp == "fp16" and device.type != "cuda",
         "--amp fp16 needs a CUDA GPU; on the CPU use bf16 or none"),
        (sync_bn and device.type != "cuda", "--sync-bn needs CUDA GPUs"),
        (data_parallel and device.type != "cuda",
         "--data-parallel needs CUDA GPUs; on the CPU use torchrun --nproc_per_node=N"),
        (data_parallel and torchrun, "--data-parallel is for one process; under torchrun each "
         "process already drives one GPU (DDP): drop one of the two"),
        ((torchrun or data_parallel) and flag.startswith("cuda:"), f"--device {flag} names one "
         "GPU, but torchrun gives each process the GPU of its LOCAL_RANK and --data-parallel uses "
         "all visible GPUs: use --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)")]
    for failed, message in problems:
        if failed:
            raise UsageError(message)


def wrap_for_devices(model: nn.Module, *, world: int, device: torch.device, amp: str,
                     sync_bn: bool, data_parallel: bool,
                     compile_model: bool) -> tuple[nn.Module, nn.Module]:
    """(network to train, to validate): SyncBN, then DDP or DataParallel, then torch.compile."""
    net = nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_bn and world > 1 else model
    train_net = eval_net = net  # each rank validates its shard without DDP, whose forward waits
    if world > 1:
        # SMP's Unet++ keeps an scSE block on its last level, with no skip to attend: its
        # parameters get no gradient, and DDP must be told to expect that
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.config["decoder"] == "unetplusplus")
    elif data_parallel:  # each replica runs in a thread of its own: AutocastReplica sets its dtype
        train_net = eval_net = nn.DataParallel(AutocastReplica(net, amp))
    if compile_model:  # after DDP, so that gradients travel while the backward pass runs
        train_net, eval_net = torch.compile(train_net), torch.compile(eval_net)
    return train_net, eval_net


def to_device(images: torch.Tensor, masks: torch.Tensor,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch onto the device without blocking the host, images channels_last on a GPU."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return (images.to(device, non_blocking=True, memory_format=memory_format),
            masks.to(device, non_blocking=True))


class AutocastReplica(nn.Module):
    """Runs `module` under --amp's autocast in each of DataParallel's replica threads."""

    def __init__(self, module: nn.Module, amp: str):
        super().__init__()
        self.module, self.amp = module, amp

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # autocast is per thread: else a bf16 replica would run CUDA's default, fp16, unscaled
        with autocast(images.device, self.amp):
            return self.module(images)


def available_cores() -> int:
    """The cores this process may use (its affinity, where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """One DataLoader worker per core this process may use, at most 4 (torch warns past them)."""
    return min(4, available_cores())


def versions() -> dict:
    import numpy
    import torchvision
    return {"python": platform.python_version(),
            "torch": str(torch.__version__),  # TorchVersion: not a plain str
            "torchvision": str(torchvision.__version__), "numpy": numpy.__version__,
            "cuda": torch.version.cuda}


def git_commit() -> str | None:
    """The project's commit, or None outside a git checkout (the record then says so)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    return (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu")


def environment(device: torch.device) -> str:
    """One line naming the device and the versions, printed above every table of measurements."""
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return (f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"Python {platform.python_version()}")
