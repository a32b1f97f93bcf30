"""Where a small run's wall time goes: train.py on a tiny folder of synthetic mammograms, as a user runs it.

It writes the folder (images/ and masks/ as PNG), runs `python train.py --dataset folder ...` in a new process, and
prints the share of the process's wall time spent in training steps and validation, the start-up, the waits for
checkpoint writes, the rest, and the bytes the run wrote (what train.py --json records under "time").

    python bench/run_time.py [--epochs 150] [--images 16] [--size 64] [--device cpu] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from readers.synthetic import synthetic_mammogram  # noqa: E402


def write_folder(root: Path, images: int, size: int) -> None:
    """images/ and masks/ of synthetic mammograms (0/255 masks), as a user's own data would be."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(images):
        image, mask = synthetic_mammogram((size, size), np.random.default_rng(i))
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"case{i:03d}.png")
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / "masks" / f"case{i:03d}.png")


def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        write_folder(scratch / "data", args.images, args.size)
        command = [sys.executable, str(ROOT / "train.py"), "--dataset", "folder", "--data-root",
                   str(scratch / "data"), "--weights", "none", "--epochs", str(args.epochs), "--image-size",
                   str(args.size), "--batch-size", "4", "--decoder-channels", "16,16,16,16,16", "--workers",
                   str(args.workers), "--device", args.device, "--panels", "0", "--print-freq", "1000",
                   "--cache-dir", str(scratch / "cache"), "--out-dir", str(scratch / "run"), "--json",
                   str(scratch / "final.json")]
        started = time.time()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        wall = time.time() - started
        if done.returncode != 0:
            sys.exit(f"run_time.py: train.py failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        timing = json.loads((scratch / "final.json").read_text())["time"]
        written = sum(path.stat().st_size for path in (scratch / "run").iterdir() if path.is_file())
    steps = timing["training"] + timing["validation"]
    result = dict(epochs=args.epochs, images=args.images, size=args.size, wall_seconds=wall,
                  in_steps=steps / wall, start_up=timing["start-up"] / wall,
                  checkpoint_waits=timing["checkpoints (waited)"] / wall,
                  other=1 - (steps + timing["start-up"] + timing["checkpoints (waited)"]) / wall,
                  checkpoint_bytes=timing["checkpoint_bytes"], folder_bytes=written)
    print(f"{args.epochs} epochs of {args.images} images at {args.size}x{args.size} on {args.device}: "
          f"{wall:.1f} s wall; training and validation {100 * result['in_steps']:.1f}%, start-up "
          f"{100 * result['start_up']:.1f}%, waiting for checkpoint writes {100 * result['checkpoint_waits']:.1f}%, "
          f"other {100 * result['other']:.1f}%; checkpoints written {timing['checkpoint_bytes'] / 2**20:.0f} MB, "
          f"run folder {written / 2**20:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=150, help="epochs (default: 150, the thesis')")
    p.add_argument("--images", type=int, default=16, help="images in the folder, 80%% train (default: 16)")
    p.add_argument("--size", type=int, default=64, help="image side (default: 64)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
