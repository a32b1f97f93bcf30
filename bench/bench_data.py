"""Data-pipeline throughput: images/s of the cbis, mias and synthetic datasets, cold and warm.

Cold: decode and preprocess (and write the cache entry); warm: read the on-disk cache. The cbis rows
read a fake CBIS-DDSM written here, so they need no 160 GB download; mias reads
../shared/data/mini-mias when present. Results: docs/speed.md.

    python bench/bench_data.py [--images 8] [--size 256] [--json results.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
import data  # noqa: E402

MIAS_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mini-mias"


def write_dicom(path: Path, pixels: np.ndarray) -> None:
    """An uncompressed Secondary Capture DICOM, as CBIS-DDSM ships them."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ("1.2.840.10008.5.1.4.1.1.7",
                                                                      generate_uid())
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (meta.MediaStorageSOPClassUID,
                                         meta.MediaStorageSOPInstanceUID)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_fake_cbis(root: Path, images: int, shape: tuple[int, int]) -> None:
    """`images` mass cases of one ROI each (image, mask, crop) in the current NBIA layout."""
    rng = np.random.default_rng(0)
    rows, metadata = [], []
    height, width = shape
    y, x = np.ogrid[:height, :width]
    for n in range(images):
        subject = f"Mass-Test_P_{n:05d}_{'LEFT' if n % 2 else 'RIGHT'}_CC"
        # the chest wall on the left
        breast = ((y - height / 2) / (0.45 * height)) ** 2 + (x / (0.8 * width)) ** 2 < 1
        full = (breast * 30000 + rng.integers(0, 4000, shape)).astype(np.uint16)
        mask = np.zeros(shape, np.uint8)
        mask[height // 2:height // 2 + 120, width // 4:width // 4 + 100] = 255
        if n % 2 == 0:  # half of the breasts face right
            full, mask = full[:, ::-1], mask[:, ::-1]
        paths = {}
        for key, description, files in (
                ("full", "full mammogram images", {"1-1.dcm": full}),
                ("roi", "ROI mask images", {"1-1.dcm": full[:300, :250], "1-2.dcm": mask})):
            name = subject if key == "full" else f"{subject}_1"
            study, series = generate_uid(), generate_uid()
            folder = (Path("CBIS-DDSM") / name / f"01-01-2017-DDSM-NA-{study[-5:]}"
                      / f"1.000000-{description}-{series[-5:]}")
            for file, pixels in files.items():
                write_dicom(root / folder / file, np.ascontiguousarray(pixels))
            metadata.append([series, "CBIS-DDSM", name, study, description,
                             f"./{folder.as_posix()}"])
            paths[key] = f"{name}/{study}/{series}"
        rows.append([f"P_{n:05d}", 2, subject.split("_")[3], "CC", 1, "mass", "OVAL",
                     "CIRCUMSCRIBED", 4, "BENIGN", 3, f"{paths['full']}/000000.dcm",
                     f"{paths['roi']}/000000.dcm", f"{paths['roi']}/000001.dcm\n"])
    with open(root / "mass_case_description_test_set.csv", "w", newline="") as file:
        csv.writer(file).writerows([["patient_id", "breast_density", "left or right breast",
                                     "image view", "abnormality id", "abnormality type",
                                     "mass shape", "mass margins", "assessment", "pathology",
                                     "subtlety", "image file path", "cropped image file path",
                                     "ROI mask file path"], *rows])
    with open(root / "metadata.csv", "w", newline="") as file:
        csv.writer(file).writerows([["Series UID", "Collection", "Subject ID", "Study UID",
                                     "Series Description", "File Location"], *metadata])


def images_per_second(dataset) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return len(dataset) / (time.perf_counter() - start)


def run(*, images: int = 8, size: int = 256, dicom_shape: tuple[int, int] = (5000, 3000),
        synthetic_images: int = 200) -> dict:
    """Measure every pipeline on one torch thread, as in a DataLoader worker; returns
    {"environment": {...}, "rows": [{pipeline, images, cold, warm, build_s}]}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = _measure(images, size, dicom_shape, synthetic_images)
    finally:
        torch.set_num_threads(threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    environment = dict(cpu=cpu, cores=os.cpu_count(), torch_threads=1,
                       load_average=os.getloadavg()[0], python=platform.python_version(),
                       torch=torch.__version__, numpy=np.__version__, pydicom=pydicom.__version__,
                       pillow=PIL.__version__, size=size, dicom_shape=list(dicom_shape))
    return dict(environment=environment, rows=rows)


def _measure(images: int, size: int, dicom_shape: tuple[int, int],
             synthetic_images: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        # just written, the files sit in the page cache: "cold" measures decoding, not the disk
        write_fake_cbis(work / "cbis", images, dicom_shape)
        sources = [("cbis", work / "cbis", "test", {})]
        if (MIAS_ROOT / "Info.txt").is_file():
            sources.append(("mias", MIAS_ROOT, "train", {}))
        for name, root, split, options in sources:
            cache = work / f"cache-{name}"
            start = time.perf_counter()
            cold_set = data.build_dataset(name, root, split, size, cache_dir=cache, augment=False,
                                          verbose=False, **options)
            build_s = time.perf_counter() - start
            cold = images_per_second(cold_set)
            warm_set = data.build_dataset(name, root, split, size, cache_dir=cache, augment=False,
                                          verbose=False)
            rows.append(dict(pipeline=name, images=len(cold_set), cold=cold,
                             warm=images_per_second(warm_set), build_s=build_s))
        for augment in (False, True):
            synthetic = data.build_dataset("synthetic", None, "train", size,
                                           num_images=synthetic_images, augment=augment)
            rows.append(dict(pipeline=f"synthetic{' +augment' if augment else ''}",
                             images=len(synthetic), cold=images_per_second(synthetic), warm=None,
                             build_s=0.0))
    return rows


def print_table(result: dict) -> None:
    """The table of run()'s result, headed by the machine and the versions."""
    env = result["environment"]
    print(f"{env['cpu']}, {env['cores']} cores (load average {env['load_average']:.1f}), "
          f"1 torch thread as in a DataLoader worker; python {env['python']}, "
          f"torch {env['torch']}, numpy {env['numpy']}, pydicom {env['pydicom']}, "
          f"pillow {env['pillow']}")
    rows, cols = env["dicom_shape"]
    print(f"output {env['size']}x{env['size']}; fake CBIS DICOMs {rows}x{cols} uint16")
    print(f"{'pipeline':<20}{'images':>8}{'build s':>10}{'cold img/s':>12}{'warm img/s':>12}")
    for row in result["rows"]:
        warm = f"{row['warm']:.1f}" if row["warm"] is not None else "-"
        print(f"{row['pipeline']:<20}{row['images']:>8}{row['build_s']:>10.2f}"
              f"{row['cold']:>12.1f}{warm:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8,
                        help="fake CBIS-DDSM mammograms to write and read")
    parser.add_argument("--size", type=int, default=256, help="output side in pixels (thesis: 256)")
    parser.add_argument("--dicom-shape", type=int, nargs=2, default=(5000, 3000),
                        metavar=("ROWS", "COLS"),
                        help="pixels of each fake full mammogram "
                        "(CBIS-DDSM: 3000-7000 x 1500-5400)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    result = run(images=args.images, size=args.size, dicom_shape=tuple(args.dicom_shape))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
