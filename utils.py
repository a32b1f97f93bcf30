"""Plumbing every script shares, at the bottom of the house (the role of torchvision's references/utils.py).

Nothing here is about the thesis itself; each piece exists once so that train.py, evaluate.py, predict.py,
benchmark.py, export.py and bench/ never import one another for a helper:
  * devices and precision  resolve_device (--device), init_distributed (torchrun's variables), to_device, autocast
                           (--amp), AutocastReplica (DataParallel's threads), default_workers
  * command lines          ArgumentParser and UsageError (one line on stderr, exit code 2), error_line, run_command
  * training progress      Progress: the fixed-format step lines of train_one_epoch
  * files                  atomic_write (temporary file, fsync, rename, cleanup; a full disk gives one clear line),
                           write_json, check_writable_file and check_output_folder (before any work starts)
  * the record of a run    versions, git_commit, device_name, environment
  * measuring              median_seconds, graph_latency (CUDA graphs), count_parameters, count_flops
Imports only the standard library and torch.
"""
from __future__ import annotations

import argparse
import datetime
import errno
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

_UMASK = os.umask(0o022)  # read the process' umask (the only way is to set it) and put it back at once
os.umask(_UMASK)
AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --amp, as every script spells it


# ---------------------------------------------------------------------------------------------------------------------
# Devices and precision

def resolve_device(name: str | None) -> torch.device:
    """--device auto (or None), cpu, cuda or cuda:N -> torch.device; UsageError naming the flag otherwise."""
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
    """torch.autocast for --amp none | bf16 | fp16 (none: disabled, so the model runs in fp32)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp], enabled=amp != "none", **options)


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment variables only (RANK, WORLD_SIZE, LOCAL_RANK), the
    process group initialised (NCCL on GPUs, gloo on CPUs); (0, 1, device) in a single process. A CUDA device without
    an index becomes the process' LOCAL_RANK GPU, made current, with cuDNN's benchmark mode: every batch of a run has
    one shape, so cuDNN times its algorithms once and keeps the fastest."""
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world, local_rank = (int(os.environ.get(k, 0)) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = device if device.index is not None else torch.device("cuda", local_rank)  # for set_device and DDP
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if not torchrun:
        return 0, 1, device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def to_device(images: torch.Tensor, masks: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch onto the device, images channels_last on a GPU (faster convolutions), without blocking the host."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=memory_format), masks.to(device, non_blocking=True)


class AutocastReplica(nn.Module):
    """Runs `module` under --amp's autocast. nn.DataParallel runs each replica in a thread of its own, and autocast's
    dtype is per thread: without this, --amp bf16 replicas would run CUDA's default autocast dtype, fp16, unscaled."""

    def __init__(self, module: nn.Module, amp: str):
        super().__init__()
        self.module, self.amp = module, amp

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.amp):
            return self.module(images)


def default_workers() -> int:
    """DataLoader workers by default: one per core this process may use, at most 4 (torch warns past the cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cores)


# ---------------------------------------------------------------------------------------------------------------------
# Command lines: one line on stderr for every error a user can cause

class UsageError(Exception):
    """A bad flag or flag combination; the message names the flag. One line on stderr, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line ('train.py: error: ... (see --help)') with exit code 2, not a usage block,
    and whose --help keeps the docstring's layout."""

    def __init__(self, **options):
        super().__init__(**{"formatter_class": argparse.RawDescriptionHelpFormatter, **options})

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def error_line(error: BaseException) -> str:
    """The one line a user sees for an error: its first line; for one raised in a DataLoader worker, which arrives
    with the worker's traceback wrapped around it, the original message (the last line, without the type name)."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    if "Original Traceback" in str(error):
        return re.sub(r"^[\w.]*Error: ", "", lines[-1])
    return lines[0]


def run_command(prog: str, main: Callable[[], object], user_errors: tuple[type[BaseException], ...], *,
                exit_codes: dict[type, int] | None = None, quiet: bool = False) -> int:
    """main() -> its exit code (an int it returns, else 0); an error of `user_errors` -> 'prog: error: <one line>' on
    stderr (not printed when quiet, e.g. on every rank but 0) and its code in exit_codes, else 2. Other errors are
    bugs: they keep their traceback."""
    try:
        code = main()
        return code if isinstance(code, int) else 0
    except user_errors as error:
        if not quiet:
            print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return (exit_codes or {}).get(type(error), 2)


# ---------------------------------------------------------------------------------------------------------------------
# Training progress

class Progress:
    """The step lines of training: one fixed-format line every print_freq steps and at an epoch's end, and on a
    terminal a live line redrawn in between. Silent where not enabled (every rank but 0)."""

    def __init__(self, *, steps: int, epochs: int, print_freq: int, enabled: bool, world: int, device: torch.device):
        self.steps, self.epochs, self.print_freq, self.enabled, self.world = steps, epochs, print_freq, enabled, world
        self.device, self.tty, self.started = device, sys.stdout.isatty(), None
        self.window = [0.0, 0.0, 0]  # seconds waiting for data, seconds per step, images, since the last fixed line

    def step(self, epoch: int, i: int, values: dict, images: int, data_time: float, step_time: float,
             lr: float) -> None:
        if i == 0:
            self.started, self.window = time.time(), [0.0, 0.0, 0]
        self.window = [self.window[0] + data_time, self.window[1] + step_time, self.window[2] + images]
        fixed = (i + 1) % self.print_freq == 0 or i + 1 == self.steps
        if not self.enabled or not (fixed or self.tty):
            return
        done = epoch * self.steps + i + 1
        seconds_per_step = (time.time() - self.started) / (i + 1)
        eta = datetime.timedelta(seconds=round(seconds_per_step * (self.epochs * self.steps - done)))
        steps_in_window = max(1, (i + 1) % self.print_freq or self.print_freq) if fixed else i + 1
        terms = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "loss")
        line = (f"epoch {epoch} step {done} ({i + 1}/{self.steps}) loss {values['loss']:.4f} ({terms}) lr {lr:.2e} "
                f"img/s {self.window[2] * self.world / self.window[1]:.1f} "
                f"data {1000 * self.window[0] / steps_in_window:.0f}ms eta {eta}")
        if self.device.type == "cuda":
            line += f" mem {torch.cuda.max_memory_allocated(self.device) / 2 ** 30:.1f}GiB"
        if fixed:
            print(("\r\x1b[2K" if self.tty else "") + line, flush=True)
            self.window = [0.0, 0.0, 0]
        else:  # a terminal: redraw one live line between the fixed-format lines
            print("\r\x1b[2K" + line[:200], end="", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Files

class DiskFullError(OSError):
    """No space left while writing a file; the message names the file system and about how much was needed."""


def atomic_write(path: str | os.PathLike, content: bytes | Callable[[BinaryIO], None], *,
                 size_hint: int | None = None) -> None:
    """Write `content` (bytes, or a function writing to a binary file) to `path` so that readers only ever see the
    old or the complete new file: a uniquely named temporary file in the same folder (two writers never share one),
    fsync, then os.replace. On any failure the temporary file is removed and `path` is left as it was; a full disk
    raises DiskFullError naming the file system and the size needed (size_hint, else what was written so far)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name is cut so that it fits wherever `path`'s own name does (255 bytes on most file systems).
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.", suffix=".tmp")
    file = None
    try:
        with os.fdopen(descriptor, "wb") as raw:
            file = _RecordingFile(raw)
            if isinstance(content, (bytes, bytearray, memoryview)):
                file.write(content)
            else:
                content(file)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; others (a team's shared cache) read as usual
        os.replace(temporary, path)
    except BaseException as error:
        written = file.written if file else 0
        Path(temporary).unlink(missing_ok=True)
        failed = file.error if file and file.error else error
        if isinstance(failed, OSError) and failed.errno in (errno.ENOSPC, errno.EDQUOT):
            needed = max(size_hint or 0, written)
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(errno.ENOSPC, f"no space left on {_mount_point(path.parent)} writing {path}, needed "
                                f"about {_size(needed)} ({_size(free)} free); free some space or write elsewhere"
                                ) from None
        raise


class _RecordingFile:
    """A binary file that remembers why a write failed: torch.save reports a full disk only as "[enforce fail at
    inline_container.cc] unexpected pos", so the OSError itself must be caught on its way through."""

    def __init__(self, file: BinaryIO):
        self.file, self.error, self.written = file, None, 0

    def write(self, data) -> int:
        try:
            count = self.file.write(data)
        except OSError as error:
            self.error = error
            raise
        self.written += count
        return count

    def __getattr__(self, name: str):  # flush, tell, seek, ... as the file has them
        return getattr(self.file, name)


def write_json(path: str | os.PathLike, payload) -> None:
    """`payload` as indented JSON, written atomically; NaN becomes null (JSON has no NaN), numpy numbers plain ones."""
    atomic_write(path, (json.dumps(_json_ready(payload), indent=2, allow_nan=False) + "\n").encode())


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy or torch scalar
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def check_writable_file(path: str | os.PathLike, flag: str) -> Path:
    """Fail now, in one line naming `flag`, if `path` could not be written later (a folder, or in a folder that
    cannot be made or written): checked before an hour of work, not after it."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    check_output_folder(path.parent if str(path.parent) else ".", flag)
    return path


def check_output_folder(folder: str | os.PathLike, flag: str = "--output") -> Path:
    """Make `folder` (and its parents) if needed and check that files can be created in it; UsageError naming
    `flag` otherwise (a file in the way, a read-only file system, no permission)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # the one sure test: create (and at once delete) a file there
    except OSError as error:
        raise UsageError(f"{flag} {folder}: cannot write there ({error.strerror or error}); choose another "
                         "folder") from None
    return folder


def _size(count: int) -> str:
    return f"{count / 2 ** 30:.2f} GB" if count >= 2 ** 30 else f"{count / 2 ** 20:.1f} MB"


def _mount_point(folder: Path) -> Path:
    folder = folder.resolve()
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# The record of a run

def versions() -> dict:
    import numpy
    import torchvision
    return {"python": platform.python_version(), "torch": str(torch.__version__),  # TorchVersion: not a plain str
            "torchvision": str(torchvision.__version__), "numpy": numpy.__version__, "cuda": torch.version.cuda}


def git_commit() -> str | None:
    """The project's commit, or None outside a git checkout (the record then says so)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def environment(device: torch.device) -> str:
    """One line naming the device and the versions, printed above every table of measurements."""
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------------------------------
# Measuring

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
