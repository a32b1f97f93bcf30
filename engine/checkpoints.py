"""The checkpoint format: what train.py writes and how every script reads it back (thesis §4.3's trained models).

A checkpoint is a dict of tensors and primitives only, so torch.load(weights_only=True) opens it and no pickled code
ever runs:
  model         state dict of the unwrapped, uncompiled model
  model_config  build_model's keyword arguments: the network is rebuilt from the file alone, no architecture flags
  optimizer, scheduler, scaler, rng   what an exact --resume needs
  epoch, step, best_metric, metric_name, metrics, args (train.py's flags as a dict), versions
  log           the epoch records up to this one (runs.py rebuilds log.jsonl from them)
training_checkpoint builds it and restore_training_state puts its training state back; save_checkpoint writes it
atomically (utils.atomic_write: a reader or a killed run never meets half a file); read_checkpoint and load_checkpoint
read it; best.pt is a hard link to the last.pt it was when it was best (share_file).

    model, checkpoint = load_checkpoint("runs/cbis/best.pt")   # model in eval mode, rebuilt from model_config
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import torch

from model import build_model
from readers.atomic import atomic_write
from .cli import error_line
from .devices import versions

MODEL_ENTRIES = ("model", "model_config")
RESUME_ENTRIES = (*MODEL_ENTRIES, "optimizer", "scheduler", "scaler", "rng", "epoch", "best_metric", "args")


class CheckpointError(Exception):
    """A checkpoint that cannot be opened or rebuilt; the message names the file and what to do."""


# ---------------------------------------------------------------------------------------------------------------------
# Building and writing

def training_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler, *, epoch: int,
                        steps_per_epoch: int, best_metric: float | None, metric_name: str, metrics: dict | None,
                        args: dict, log: list[dict]) -> dict:
    """The dict train.py saves after `epoch` (-1: before the first step). `model` is the unwrapped model; `log`
    the records of every epoch so far, so log.jsonl can always be rebuilt to match the weights (runs.py)."""
    return {"model": model.state_dict(), "model_config": model.config, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "epoch": epoch, "step": (epoch + 1) * steps_per_epoch, "best_metric": best_metric,
            "metric_name": metric_name, "metrics": metrics, "args": args, "versions": versions(), "log": list(log)}


def restore_training_state(checkpoint: dict, optimizer: torch.optim.Optimizer, scheduler, scaler, *, lr: float,
                           milestones: list[int], factors: list[float]) -> None:
    """training_checkpoint's inverse for --resume: the optimizer, scaler and RNG as they were, the schedule at its
    epoch with the run's learning rates (the checkpoint's, unless --lr or --schedule was given again)."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(dict(checkpoint["scheduler"], base_lrs=[lr], lr_lambdas=[
        {"milestones": milestones, "factors": factors}]))
    optimizer.param_groups[0]["lr"] = lr * scheduler.lr_lambdas[0](checkpoint["epoch"] + 1)
    if checkpoint["scaler"]:  # empty unless saved with fp16
        scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])


def tensor_bytes(value) -> int:
    """Bytes of every tensor inside nested dicts and lists: about the size of the saved file."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> None:
    """torch.save, atomically: readers see the old or the new file, never a partial one (utils.atomic_write)."""
    atomic_write(path, lambda file: torch.save(checkpoint, file), size_hint=tensor_bytes(checkpoint))


def share_file(source: Path, target: Path) -> None:
    """Atomically make `target` a copy of `source`: a hard link (no second write of a checkpoint of up to 3 GB) or,
    where the file system has none, a copy. Safe because save_checkpoint replaces a file by a new inode instead of
    rewriting it."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# Reading

def read_checkpoint(path: str | os.PathLike, *, needs: tuple[str, ...] = MODEL_ENTRIES, flag: str = "--checkpoint",
                    mmap: bool = False) -> dict:
    """torch.load(weights_only=True) on the CPU, checking that the file holds the entries `needs` (and a dict
    model_config); mmap=True reads only the entries touched (the args of a 3 GB file, say). Raises CheckpointError
    naming the file and `flag`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found ({flag})")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # torch.save's legacy (non-zip) format cannot be memory-mapped: read it whole
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a truncated, foreign or object-holding file
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(error))
        if found:  # an object that would need code to run: never loaded, and never advised to load
            raise CheckpointError(f"{path}: holds a Python object besides tensors and numbers ({found.group(0)}), "
                                  f"which is never loaded because loading it can run code; {flag} takes a file "
                                  "written by train.py") from None
        raise CheckpointError(f"{path}: cannot open the checkpoint ({type(error).__name__}: {error_line(error)}); "
                              f"pass a complete file written by train.py ({flag})") from None
    missing = [entry for entry in needs if not isinstance(checkpoint, dict) or entry not in checkpoint]
    if missing:
        found = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: no {', '.join(map(repr, missing))} entries (found {found}); {flag} takes a "
                              "file written by train.py, which stores the model_config that names the network (a "
                              "bare state_dict does not)")
    if "model_config" in needs and not isinstance(checkpoint["model_config"], dict):
        raise CheckpointError(f"{path}: its model_config is a {type(checkpoint['model_config']).__name__}, not the "
                              f"dict of build_model arguments train.py writes ({flag})")
    return checkpoint


def plain_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weight names without the prefixes of DataParallel/DDP ("module.") or torch.compile ("_orig_mod."), with a
    note on stderr when there were any."""
    stripped, plain = set(), {}
    for key, value in state.items():
        name = key
        while name.startswith(("module.", "_orig_mod.")):  # DDP around a compiled model gives both
            name = name.split(".", 1)[1]
        if name != key:
            stripped.add(key[:len(key) - len(name)])
        plain[name] = value
    if stripped:
        print(f"note: {path}: stripped {', '.join(map(repr, sorted(stripped)))} from the weight names (saved from "
              "a DataParallel/DDP-wrapped or compiled model)", file=sys.stderr)
    return plain


def state_dict_from_smp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A segmentation_models_pytorch Unet/UnetPlusPlus (ResNet-34) state dict under model.py's names."""
    def ours(key: str) -> str:
        key = key.replace("segmentation_head.0.", "head.")
        return key.replace(".attention.cSE.", ".cse.").replace(".attention.sSE.", ".sse.")
    return {ours(key): value for key, value in state.items()}


def state_dict_from_timm_bit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's resnetv2_50x1_bit features (as SMP's tu- encoder wraps them) under model.py's names, which follow the
    .npz: stem_conv -> root.conv, stages_0.blocks.0 -> body.block1.unit01, norm1 -> gn1, downsample.conv ->
    downsample."""
    def ours(key: str) -> str:
        key = key.replace("encoder.model.", "encoder.").replace("stem_conv.", "root.conv.")
        key = re.sub(r"stages_(\d)\.blocks\.(\d+)\.", lambda m: f"body.block{int(m[1]) + 1}.unit{int(m[2]) + 1:02d}.",
                     key)
        return re.sub(r"\.norm(\d)\.", r".gn\1.", key.replace(".downsample.conv.", ".downsample."))
    return {ours(key): value for key, value in state.items()}


def model_from_checkpoint(checkpoint: dict, path: str | os.PathLike) -> torch.nn.Module:
    """build_model(**model_config) with the checkpoint's weights loaded, on the CPU."""
    config = dict(checkpoint["model_config"])
    config.pop("weights", None)  # the trained weights come from the state dict: never download encoder weights here
    try:
        model = build_model(**config)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: its model_config does not build a model ({error})") from error
    state, expected = plain_state_dict(checkpoint["model"], path), model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [key for key in expected if key in state and getattr(state[key], "shape", None) != expected[key].shape]
    if missing or unexpected or misshapen:
        examples = (missing + unexpected + misshapen)[:2]
        raise CheckpointError(f"{path}: the weights do not fit its model_config ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(misshapen)} of another shape, e.g. {examples}); "
                              "was the file edited or written by another program?")
    model.load_state_dict(state)
    return model


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a train.py checkpoint and load its weights -> (model in eval mode on device, checkpoint).

    Only "model" (state dict) and "model_config" (build_model kwargs) are used; the other entries come back as they
    are. Raises CheckpointError for a missing, unreadable or incomplete file, or weights that do not fit the config.
    """
    checkpoint = read_checkpoint(path)
    return model_from_checkpoint(checkpoint, path).to(device).eval(), checkpoint
