"""What several test files need: DICOM files written with pydicom, checkpoints as train.py writes them (the model and
its model_config), gloo processes that must not hang CI, a run's log.jsonl read as strict JSON, and a toy mini-MIAS.
Test files import it as `helpers` (pytest puts the tests' folder on the path)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                slope: float | None = None, intercept: float | None = None, frames: bool = False,
                spacing: tuple[float, float] | None = None, **tags) -> Path:
    """A Secondary Capture DICOM as CBIS-DDSM ships them (implicit VR little endian, uncompressed) of integer
    `pixels`: (H, W) gray, (H, W, 3) RGB, or (N, H, W) with frames=True; optional rescale and PixelSpacing (mm);
    `tags`: any other attributes by keyword (WindowCenter=...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:] if pixels.ndim == 2 or frames else pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 and not frames else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB" if ds.SamplesPerPixel == 3 else photometric
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if spacing is not None:
        ds.PixelSpacing = [f"{spacing[0]}", f"{spacing[1]}"]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def save_checkpoint(path: Path, model, *, prefix: str = "", **extra) -> Path:
    """The model as a checkpoint with its model_config (weight names under `prefix`, as DDP or compile save them)."""
    state = {prefix + key: value for key, value in model.state_dict().items()}
    torch.save(dict(model=state, model_config=model.config, **extra), path)
    return path


def run_processes(function, args: tuple, processes: int) -> None:
    """function(rank, *args) in `processes` forked processes; a hang fails the test after 60 s instead of CI."""
    context = mp.start_processes(function, args=args, nprocs=processes, join=False, start_method="fork")
    for _ in range(120):
        if context.join(timeout=0.5):
            return
    for process in context.processes:
        process.terminate()
    pytest.fail(f"the {processes} gloo processes did not finish in 60 s")


def listing(cache: Path, dataset: str, split: str) -> Path:
    """The CSV of a split's skipped rows in a cache folder (data.py names it by dataset and root)."""
    (path,) = cache.glob(f"skipped_{dataset}-*_{split}.csv")
    return path


# A run of seconds: 6 synthetic images at 32x32, the narrow decoder, no panels, no loader workers
TINY = ["--image-size", "32", "--limit", "6", "--batch-size", "3", "--decoder-channels", "16,16,16,16,16",
        "--panels", "0", "--print-freq", "100", "--workers", "0"]
# TINY's flags that a --resume does not restore, being this invocation's, not the run's: without them a resumed run
# starts loader workers (each fork costs the 350 MB process a second of copy-on-write) and draws panels
TINY_RESUMED = ["--panels", "0", "--workers", "0"]


def epochs_logged(folder: Path) -> list[int]:
    return [record["epoch"] for record in read_log(folder)]


def read_log(folder: Path) -> list[dict]:
    """A run's log.jsonl, read as strict JSON readers (jq, JavaScript) do: a bare NaN or Infinity fails."""
    def refuse(token: str):
        raise ValueError(f"{folder / 'log.jsonl'} holds {token}, which is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in (folder / "log.jsonl").read_text().splitlines()]


def as_logged(records: list[dict]) -> list[dict]:
    """A checkpoint's epoch records as log.jsonl holds them: a NaN score (nothing predicted) is null there."""
    return [{key: None if isinstance(value, float) and math.isnan(value) else value for key, value in record.items()}
            for record in records]


def write_toy_mias(root) -> None:
    """A mini-MIAS of eight 64x64 images (four women), Info.txt's circles and two outline masks: enough for a dry
    run's two folds, on any machine."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng, rows = np.random.default_rng(0), []
    for number in range(1, 9):
        ref, image = f"mdb{number:03d}", (rng.random((64, 64)) * 80).astype(np.uint8)
        image[:, :40] += 60  # the breast on the left
        if number % 3:  # a mass: a bright disc
            yy, xx = np.ogrid[:64, :64]
            disc = (yy - 30) ** 2 + (xx - 20) ** 2 <= 36
            image[disc] = 220
            rows.append(f"{ref} G CIRC B 20 34 6")
            if number % 2:
                Image.fromarray(disc.astype(np.uint8) * 255).save(root / "masks" / f"{ref}.png")
        else:
            rows.append(f"{ref} G NORM")
        Image.fromarray(image).save(root / "images" / f"{ref}.png")
    (root / "Info.txt").write_text("\n".join(rows) + "\n")
