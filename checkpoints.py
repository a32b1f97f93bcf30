"""The checkpoint format: what train.py writes and how every script reads it back.

A checkpoint is a dict of tensors and primitives only, so torch.load(weights_only=True) opens it:
  model         state dict of the unwrapped, uncompiled model
  model_config  build_model's keyword arguments: the network is rebuilt from the file alone, no architecture flags
  optimizer, scheduler, scaler, rng   what an exact --resume needs
  epoch, step, best_metric, metric_name, metrics, args (train.py's flags as a dict), versions
Files are written atomically (a temporary file, fsync, then os.replace), so a reader or a killed run never meets
half a file, and best.pt is a hard link to the last.pt it was when it was best.

    model, checkpoint = load_checkpoint("runs/cbis/best.pt")   # model in eval mode, rebuilt from model_config
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from model import build_model

MODEL_ENTRIES = ("model", "model_config")
RESUME_ENTRIES = (*MODEL_ENTRIES, "optimizer", "scheduler", "scaler", "rng", "epoch", "best_metric", "args")


class CheckpointError(Exception):
    """A checkpoint that cannot be opened or rebuilt; the message names the file and what to do."""


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_checkpoint(path: str | os.PathLike, *, needs: tuple[str, ...] = MODEL_ENTRIES, flag: str = "--checkpoint",
                    mmap: bool = False) -> dict:
    """torch.load(weights_only=True) on the CPU, checking that the file holds the entries `needs`; mmap=True reads
    only the entries touched (the args of a 3 GB file, say). Raises CheckpointError naming the file and `flag`."""
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
    except Exception as error:  # torch raises many types for a truncated, foreign or pickled-object file
        raise CheckpointError(f"{path}: cannot open the checkpoint ({type(error).__name__}: {_first_line(error)}); "
                              f"pass a complete file written by train.py ({flag})") from error
    missing = [entry for entry in needs if not isinstance(checkpoint, dict) or entry not in checkpoint]
    if missing:
        found = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: no {', '.join(map(repr, missing))} entries (found {found}); {flag} takes a "
                              "file written by train.py, which stores the model_config that names the network (a "
                              "bare state_dict does not)")
    return checkpoint


def model_from_checkpoint(checkpoint: dict, path: str | os.PathLike) -> torch.nn.Module:
    """build_model(**model_config) with the checkpoint's weights loaded, on the CPU. Keys saved through
    DataParallel/DDP ("module.") or torch.compile ("_orig_mod.") are stripped, with a note on stderr."""
    config = dict(checkpoint["model_config"])
    config.pop("weights", None)  # the trained weights come from the state dict: never download encoder weights here
    try:
        model = build_model(**config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its model_config does not build a model ({error})") from error
    stripped = set()

    def plain_key(key: str) -> str:
        plain = key
        while plain.startswith(("module.", "_orig_mod.")):  # DDP around a compiled model gives both
            plain = plain.split(".", 1)[1]
        if plain != key:
            stripped.add(key[:len(key) - len(plain)])
        return plain

    state = {plain_key(key): value for key, value in checkpoint["model"].items()}
    if stripped:
        print(f"note: {path}: stripped {', '.join(map(repr, sorted(stripped)))} from the weight names (saved from "
              "a DataParallel/DDP-wrapped or compiled model)", file=sys.stderr)
    expected = model.state_dict()
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


# ---------------------------------------------------------------------------------------------------------------------
# Writing

def atomic_save(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: readers see the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def share_file(source: Path, target: Path) -> None:
    """Atomically make `target` a copy of `source`: a hard link (no second write of a checkpoint of up to 3 GB) or,
    where the file system has none, a copy. Safe because atomic_save replaces a file by a new inode instead of
    rewriting it."""
    temporary = target.with_name(target.name + ".tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):  # not a git checkout, or no git: the record says None
        return None


def versions() -> dict:
    import torchvision
    return {"python": platform.python_version(), "torch": str(torch.__version__),  # TorchVersion: not a plain str
            "torchvision": str(torchvision.__version__), "numpy": np.__version__, "cuda": torch.version.cuda}
