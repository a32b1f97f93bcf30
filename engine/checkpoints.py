"""The checkpoint format (thesis §4.3's trained models): what train.py writes and how every script
reads it. Tensors and primitives only, so torch.load(weights_only=True) opens a file and no pickled
code runs; model_config rebuilds the network without flags. docs/runs.md lists every entry.

    model, checkpoint = load_checkpoint("runs/cbis/best.pt")  # eval mode, rebuilt from model_config
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
import zlib
from pathlib import Path

import torch

from model import build_model
from readers.atomic import atomic_write

from .cli import error_line
from .devices import versions

MODEL_ENTRIES = ("model", "model_config")
RESUME_ENTRIES = (*MODEL_ENTRIES, "optimizer", "scheduler", "scaler", "rng", "epoch", "best_metric",
                  "args")
WEIGHT_ENTRIES = (*MODEL_ENTRIES, "epoch", "step", "metrics", "metric_name", "best_metric", "args",
                  "versions", "images")


class CheckpointError(Exception):
    """A checkpoint that cannot be opened or rebuilt; the message names the file and what to do."""


# ----------------------------------------------------------------------------------------- building
def training_checkpoint(model: torch.nn.Module, optimizer, scheduler, scaler, *, epoch: int,
                        steps_per_epoch: int, best_metric: float | None, metric_name: str,
                        metrics: dict | None, args: dict, log: list[dict], next_step: int = 0,
                        partial_losses: dict | None = None, world_size: int = 1,
                        images: dict | None = None) -> dict:
    """last.pt after `epoch` (-1: none yet) and `next_step` steps into the next one, each step
    one batch on each of `world_size` processes; `images`: engine/setup.images_of_run's."""
    return {"kind": "training", "model": model.state_dict(), "model_config": model.config,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "epoch": epoch, "step": (epoch + 1) * steps_per_epoch + next_step,
            "next_step": next_step, "world_size": world_size, "images": images,
            "partial_losses": partial_losses or {},
            "best_metric": best_metric, "metric_name": metric_name,
            "metrics": metrics, "args": args, "versions": versions(), "log": list(log)}


def weights_checkpoint(checkpoint: dict) -> dict:
    """best.pt: the weights and their record, a quarter of last.pt's size."""
    return {"kind": "weights", **{key: checkpoint[key] for key in WEIGHT_ENTRIES}}


def restore_training_state(checkpoint: dict, optimizer, scheduler, scaler, *, lr: float,
                           milestones: list[int], factors: list[float]) -> None:
    """training_checkpoint's inverse for --resume; the schedule takes the run's lr and steps."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    lambdas = [{"milestones": milestones, "factors": factors}]
    scheduler.load_state_dict(dict(checkpoint["scheduler"], base_lrs=[lr], lr_lambdas=lambdas))
    optimizer.param_groups[0]["lr"] = lr * scheduler.lr_lambdas[0](checkpoint["epoch"] + 1)
    if checkpoint["scaler"]:  # empty unless saved with fp16
        scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])


def copy_to_cpu(value, *, copy: bool = True):
    """Nested dicts and lists with every tensor copied to the CPU: training cannot change it.
    copy=False copies only what is on another device (no training follows)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=copy)
    if isinstance(value, dict):
        return {key: copy_to_cpu(item, copy=copy) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copy_to_cpu(item, copy=copy) for item in value)
    return value


def tensor_bytes(value) -> int:
    """Bytes of every tensor inside nested dicts and lists: about the size of the saved file."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """CRC-32 of every weight's name, dtype, shape and bytes (about 2 GB/s, less than reading)."""
    crc = 0
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        crc = zlib.crc32(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode(), crc)
        crc = zlib.crc32(tensor.view(-1).view(torch.uint8).numpy(), crc)  # any dtype, bf16 too
    return f"crc32:{crc:08x}"


# ------------------------------------------------------------------------------------------ writing
class WriteCancelled(Exception):
    """A background write abandoned on request (a second Ctrl-C): the temporary file is removed."""


class _CancellableFile:
    """A binary file whose writes stop once `cancel` is set: torch.save gives up between chunks."""

    def __init__(self, file, cancel: threading.Event):
        self.file, self.cancel = file, cancel

    def write(self, data) -> int:
        if self.cancel.is_set():
            raise WriteCancelled()
        return self.file.write(data)

    def __getattr__(self, name: str):  # flush, tell, seek, ... as the file has them
        return getattr(self.file, name)


def save_checkpoint(checkpoint: dict, path: str | os.PathLike,
                    cancel: threading.Event | None = None) -> int:
    """torch.save atomically, the weights' checksum added; returns the bytes written."""
    if "model" in checkpoint and "checksum" not in checkpoint:
        checkpoint = dict(checkpoint, checksum=weights_checksum(checkpoint["model"]))
    cancel = cancel or threading.Event()
    atomic_write(path, lambda file: torch.save(checkpoint, _CancellableFile(file, cancel)),
                 size_hint=tensor_bytes(checkpoint))
    return os.path.getsize(path)


class CheckpointWriter:
    """Writes checkpoints in a background thread, one job at a time: training never waits for the
    disk. A failed write (a full disk) is raised in the training thread at write() or wait()."""

    def __init__(self):
        self.bytes_written, self.seconds_waited = 0, 0.0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cancel = threading.Event()

    def write(self, files: list[tuple[Path, dict]]) -> None:
        """Save each (path, checkpoint) in turn after the previous job; CPU copies (copy_to_cpu)."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(files,), name="checkpoint-writer",
                                        daemon=True)
        self._thread.start()

    def _run(self, files: list[tuple[Path, dict]]) -> None:
        try:
            for path, checkpoint in files:
                self.bytes_written += save_checkpoint(checkpoint, path, self._cancel)
        except BaseException as error:  # re-raised in the training thread
            self._error = error

    def wait(self) -> None:
        if self._thread is not None:
            started = time.perf_counter()
            self._thread.join()
            self.seconds_waited += time.perf_counter() - started
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def raise_if_failed(self) -> None:
        """The error of a write that has ended (a full disk), at once; one under way goes on."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def cancel(self) -> None:
        """Abandon the write in flight (its temporary file removed) and forget its error: the
        caller is already stopping for another reason."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._error = None


# ------------------------------------------------------------------------------------------ reading
def _open(path: Path, flag: str, mmap: bool) -> dict:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # the legacy format: read whole
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # many types, for a truncated, foreign or object-holding file
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(error))
        if found:  # an object that would need code to run: never loaded, never advised to load
            raise CheckpointError(f"{path}: holds a Python object besides tensors and numbers "
                                  f"({found.group(0)}), which is never loaded because loading it "
                                  f"can run code; {flag} takes a file written by train.py"
                                  ) from None
        # torch's advice to retry with weights_only=False would send users the wrong way: the reason
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        reason = unpickler.group(1).strip() if unpickler else error_line(error)
        raise CheckpointError(f"{path}: cannot open it as a checkpoint ({type(error).__name__}: "
                              f"{reason}); {flag} takes a complete file written by train.py"
                              ) from None


def read_checkpoint(path: str | os.PathLike, *, needs: tuple[str, ...] = MODEL_ENTRIES,
                    flag: str = "--checkpoint", mmap: bool = False) -> dict:
    """torch.load(weights_only=True) on the CPU, the entries `needs` and (read whole, not mmap) the
    weights' checksum checked; CheckpointError names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found ({flag})")
    checkpoint = _open(path, flag, mmap)
    is_dict = isinstance(checkpoint, dict)
    missing = [entry for entry in needs if not is_dict or entry not in checkpoint]
    if missing and is_dict and checkpoint.get("kind") == "weights":
        raise CheckpointError(f"{path} holds the best epoch's weights only, not the optimizer's "
                              f"state a --resume needs: continue from {path.with_name('last.pt')}, "
                              "or score this file with evaluate.py or --eval-only")
    if missing:
        found = sorted(map(str, checkpoint))[:6] if is_dict else type(checkpoint).__name__
        entries = ", ".join(map(repr, missing))
        raise CheckpointError(f"{path}: no {entries} entries (found {found}); "
                              f"{flag} takes a file written by train.py, which stores the "
                              "model_config that names the network (a bare state_dict does not)")
    for entry, what in (("model_config", "the dict of build_model arguments"),
                        ("model", "the dict of weights")):
        if entry in needs and not isinstance(checkpoint[entry], dict):
            kind = type(checkpoint[entry]).__name__
            raise CheckpointError(f"{path}: its {entry} is a {kind}, not {what} train.py writes "
                                  f"({flag})")
    if "model" in needs and not mmap and "checksum" in checkpoint:
        if weights_checksum(checkpoint["model"]) != checkpoint["checksum"]:
            raise CheckpointError(f"{path}: its weights do not match the checksum saved with them "
                                  "(the file was damaged after it was written); use another "
                                  "checkpoint of the run")
    return checkpoint


def plain_state_dict(state: dict[str, torch.Tensor],
                     path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weight names without DataParallel/DDP's "module." or torch.compile's "_orig_mod."."""
    stripped, plain = set(), {}
    for key, value in state.items():
        name = key
        while name.startswith(("module.", "_orig_mod.")):  # DDP around a compiled model gives both
            name = name.split(".", 1)[1]
        if name != key:
            stripped.add(key[:len(key) - len(name)])
        plain[name] = value
    if stripped:
        print(f"note: {path}: stripped {', '.join(map(repr, sorted(stripped)))} from the weight "
              "names (saved from a DataParallel/DDP-wrapped or compiled model)", file=sys.stderr)
    return plain


def state_dict_from_smp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An SMP Unet/UnetPlusPlus (ResNet-34) state dict in model.py's names."""
    def ours(key: str) -> str:
        key = key.replace("segmentation_head.0.", "head.")
        return key.replace(".attention.cSE.", ".cse.").replace(".attention.sSE.", ".sse.")
    return {ours(key): value for key, value in state.items()}


def state_dict_from_timm_bit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's resnetv2_50x1_bit features (SMP's tu- encoder) in model.py's names, the .npz's:
    stem_conv -> root.conv, stages_0.blocks.0 -> body.block1.unit01, norm1 -> gn1."""
    def ours(key: str) -> str:
        key = key.replace("encoder.model.", "encoder.").replace("stem_conv.", "root.conv.")
        key = re.sub(r"stages_(\d)\.blocks\.(\d+)\.",
                     lambda m: f"body.block{int(m[1]) + 1}.unit{int(m[2]) + 1:02d}.", key)
        return re.sub(r"\.norm(\d)\.", r".gn\1.", key.replace(".downsample.conv.", ".downsample."))
    return {ours(key): value for key, value in state.items()}


def model_from_checkpoint(checkpoint: dict, path: str | os.PathLike) -> torch.nn.Module:
    """build_model(**model_config) with the checkpoint's weights loaded, on the CPU."""
    config = dict(checkpoint["model_config"])
    config.pop("weights", None)  # the trained weights come from the state dict: download none
    try:
        model = build_model(**config)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: its model_config does not build a model ({error})"
                              ) from error
    state, expected = plain_state_dict(checkpoint["model"], path), model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [key for key in expected
                 if key in state and getattr(state[key], "shape", None) != expected[key].shape]
    if missing or unexpected or misshapen:
        examples = (missing + unexpected + misshapen)[:2]
        raise CheckpointError(f"{path}: the weights do not fit its model_config ({len(missing)} "
                              f"missing, {len(unexpected)} unexpected, {len(misshapen)} of another "
                              f"shape, e.g. {examples}); was the file edited or written by another "
                              "program?")
    model.load_state_dict(state)
    return model


def load_checkpoint(path: str | os.PathLike,
                    device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A train.py checkpoint -> (model in eval mode on `device`, the checkpoint's entries)."""
    checkpoint = read_checkpoint(path)
    return model_from_checkpoint(checkpoint, path).to(device).eval(), checkpoint
