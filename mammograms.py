"""Mammograms: DICOM, CBIS-DDSM (TCIA) and mini-MIAS files as users download them, and their preprocessing (§4.1).

data.py turns what this file reads into training items (cache, augmentation, normalisation) and re-exports
`read_dicom` and `DataError`. What lives here:
  * read_dicom      any single-frame grayscale DICOM -> float32 [H, W] in [0, 1]; DataError for everything else.
  * cbis_images     the official case-description CSVs -> {image id: its abnormality rows} for train/val/test, every
                    cell stripped (the mass CSVs end every "ROI mask file path" with a newline inside the quotes);
                    train/val split the training CSV by patient with a fixed seed (split_patients).
  * CbisTree        finds a subject's DICOM files in either download layout:
                      classic   <root>/<subject>/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm (the CSV paths);
                      current   <root>/CBIS-DDSM/<subject>/<date>-DDSM-<n>/<n>.000000-<description>-<n>/1-1.dcm,
                                located through the retriever's metadata.csv when there is one.
                    Both are keyed on the subject, the first component of a CSV path, which names one image
                    (Mass-Training_P_00001_LEFT_CC) or one abnormality's ROI files (..._LEFT_CC_1).
  * check_mammogram reads only DICOM headers and decides which file of each abnormality is its mask: the one with
                    the full image's rows x columns (crops are small; the CSV's crop/mask columns and file names are
                    swapped in hundreds of rows, so names are never trusted). An abnormality with no such file (size
                    mismatch, missing or unreadable files) skips its whole image, since a mask missing one lesion
                    would be silently wrong; the caller reports every skipped row.
  * load_mammogram  decodes the full image and one binary mask per abnormality (the caller merges them).
  * read_mias / load_mias  mini-MIAS: Info.txt rows -> images with their mass circles, split by patient;
                    a circle's y counts from the BOTTOM of the image.
  * preprocess_mammogram  full-resolution image + lesion masks -> the network's input size: optional breast-region
                    crop (largest bright region, widened to hold every lesion), resize of the whole image (stretched,
                    as the thesis' 256x256, or keep_aspect=True: longer side fits, padded right/bottom), intensities
                    stretched between the 0.5th and 99.5th percentiles, and a mirror so every breast faces left.
                    Each lesion's mask is area-resized and kept where at least half a pixel is covered; a lesion that
                    would vanish keeps its best-covered pixel, so small masses survive a 12-20x reduction.

    tree, images = CbisTree("/data/cbis"), cbis_images("/data/cbis", "train")  # {image id: its CSV rows}
    full, candidates, skipped = check_mammogram(tree, images["Mass-Training_P_00001_LEFT_CC"])
    image, masks = load_mammogram(full, candidates)  # (H, W) float32 in [0, 1], one (H, W) bool per lesion
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError
from PIL import Image

SPLITS = ("train", "val", "test")

CSV_NAMES = {  # (abnormality, official split) -> file name as TCIA publishes it
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calcification", "train"): "calc_case_description_train_set.csv",
    ("calcification", "test"): "calc_case_description_test_set.csv",
}
CSV_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id", "image file path",
               "cropped image file path", "ROI mask file path")
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class DataError(Exception):
    """A data problem the user can fix; the message names the file, option or CSV row and what to do."""


def error_line(error: BaseException) -> str:
    """The one line a user sees for an error: its first line; for one raised in a DataLoader worker, which arrives
    with the worker's traceback wrapped around it, the original message (the last line, without the type name)."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    if "Original Traceback" in str(error):
        return re.sub(r"^[\w.]*Error: ", "", lines[-1])
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------------
# DICOM

def _open_dicom(path: Path, *, pixels: bool) -> pydicom.Dataset:
    """dcmread plus the checks that need no pixels: one grayscale frame. Raises DataError naming the file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError as error:
        raise DataError(f"{path}: not a DICOM file ({error})") from error
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from error
    photometric = str(ds.get("PhotometricInterpretation", ""))
    kind = getattr(ds.get("SOPClassUID"), "name", None) or "non-image"  # e.g. "RT Plan Storage"
    if not photometric:
        raise DataError(f"{path}: not an image (no PhotometricInterpretation: a {kind} object?)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: colour image (PhotometricInterpretation {photometric}); "
                        "expected a MONOCHROME1/2 grayscale image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DataError(f"{path}: {frames} frames; expected a single 2-D image")
    return ds


def _read_dicom(path: Path) -> np.ndarray:
    ds = _open_dicom(path, pixels=True)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = getattr(ds.get("SOPClassUID"), "name", None) or "non-image"
        raise DataError(f"{path}: no pixel data (a {kind} object?)")
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
    try:
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises a different error type for each decoder problem
        hint = "" if syntax in UNCOMPRESSED else (" A compressed DICOM needs a decoder plugin, e.g. "
                                                  "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`.")
        reason = " ".join(str(error).split())  # pydicom lists each plugin's reason on a line of its own
        raise DataError(f"{path}: cannot decode the pixel data ({getattr(syntax, 'name', syntax)}): {reason}.{hint}"
                        ) from error
    if pixels.ndim != 2:
        raise DataError(f"{path}: pixel array of shape {pixels.shape}; expected a single 2-D image")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if pixels.dtype.kind == "f":  # float pixel data has no nominal range: use the image's own
        stored = (float(pixels.min()), float(pixels.max()))
    else:  # the full range the stored bits can hold, so intensities keep their meaning across images
        bits = int(ds.get("BitsStored") or 8 * pixels.dtype.itemsize)
        stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if pixels.dtype.kind == "i" else (0, 2 ** bits - 1)
    low, high = sorted(value * slope + intercept for value in stored)
    # One affine map, stored value -> (value * slope + intercept - low) / (high - low), done in two passes.
    scale, offset = slope / max(high - low, 1e-12), (intercept - low) / max(high - low, 1e-12)
    if ds.PhotometricInterpretation == "MONOCHROME1":  # 0 = white: invert so that bright means dense everywhere
        scale, offset = -scale, 1.0 - offset
    image = pixels.astype(np.float32)
    image *= scale
    image += offset
    np.clip(image, 0.0, 1.0, out=image)  # stored values beyond BitsStored (bad headers) must not leave [0, 1]
    return image


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read one grayscale DICOM: rescale slope/intercept applied, MONOCHROME1 inverted, (H, W) float32 in [0, 1].

    The stored range (0 .. 2**BitsStored - 1, or the signed range), after rescaling, maps onto [0, 1]. Not DICOM,
    truncated, colour, several frames, no pixel data or a compressed syntax without a decoder raise DataError
    naming the file; no other exception type escapes.
    """
    path = Path(path)
    try:
        return _read_dicom(path)
    except (DataError, MemoryError):
        raise
    except Exception as error:  # malformed tags surface as ValueError/TypeError/KeyError deep inside pydicom
        raise DataError(f"{path}: unreadable DICOM ({type(error).__name__}: {error})") from error


def dicom_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) from the header alone; DataError if the file is no usable image or visibly truncated."""
    try:
        ds = _open_dicom(path, pixels=False)
        rows, columns = int(ds.Rows), int(ds.Columns)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        expected = rows * columns * int(ds.BitsAllocated) // 8  # uncompressed pixel bytes
    except DataError:
        raise
    except Exception as error:  # missing Rows/Columns or malformed values
        raise DataError(f"{path}: unreadable DICOM header ({type(error).__name__}: {error})") from error
    if syntax in UNCOMPRESSED and path.stat().st_size < expected:
        raise DataError(f"{path}: truncated ({path.stat().st_size} bytes, the {rows}x{columns} pixels alone "
                        f"need {expected}); download it again")
    return rows, columns


MASK_STRAY_FRACTION = 0.01  # of a mask's non-zero pixels, the most that may lie below its maximum


def read_mask(path: Path) -> np.ndarray | None:
    """A CBIS ROI mask as (H, W) bool (pixels above half the maximum), or None if the file is not a mask: empty, or
    an image (over MASK_STRAY_FRACTION of its non-zero pixels below the maximum; a mask holds 0 and 255, give or
    take a few stray values)."""
    values = read_dicom(path)
    top = values.max()
    lit = np.count_nonzero(values)
    if top == 0 or lit - np.count_nonzero(values == top) > MASK_STRAY_FRACTION * lit:
        return None
    return values > top / 2


# ---------------------------------------------------------------------------------------------------------------------
# Case-description CSVs and the patient split

def read_case_rows(path: Path) -> list[dict]:
    """Rows of one case-description CSV with every header and cell stripped, plus 'row' (1-based) and 'csv'."""
    if not path.is_file():
        raise DataError(f"{path}: CBIS-DDSM case-description CSV not found; download the four CSVs from the TCIA "
                        "CBIS-DDSM page into the data root (--data-root)")
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in CSV_COLUMNS if name not in header]
        if missing:
            raise DataError(f"{path}: columns {missing} missing; use the original TCIA CSV (some copies rename them)")
        rows = []
        for number, cells in enumerate(reader, start=1):
            if not any(cell.strip() for cell in cells):  # blank lines, e.g. at the end of the file
                continue
            row = {name: cell.strip() for name, cell in zip(header, cells)}
            if not all(row.get(name) for name in CSV_COLUMNS):
                raise DataError(f"{path}: row {number} has empty or missing cells in {list(CSV_COLUMNS)}")
            rows.append(dict(row, row=number, csv=path.name))
    return rows


def subject_of(csv_path: str) -> str:
    """First component of a CSV file path: the subject (one image, or one abnormality's ROI files)."""
    return csv_path.replace("\\", "/").split("/")[0]


def split_patients(patients: list[str], *, val_fraction: float, seed: int) -> set[str]:
    """The validation patients: a seeded shuffle of the sorted ids, first round(n * val_fraction) of them."""
    unique = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:round(len(unique) * val_fraction)]}


def cbis_images(csv_dir: str | os.PathLike, split: str, *, abnormality: str = "mass", val_fraction: float = 0.2,
                split_seed: int = 0) -> dict[str, list[dict]]:
    """{image id (subject): its CSV rows, one per abnormality}, sorted, for "train", "val" or "test"."""
    if abnormality not in ("mass", "calcification"):
        raise DataError(f"cbis: abnormality must be 'mass' or 'calcification', got {abnormality!r}")
    rows = read_case_rows(Path(csv_dir) / CSV_NAMES[abnormality, "test" if split == "test" else "train"])
    if split != "test":
        validation = split_patients([row["patient_id"] for row in rows], val_fraction=val_fraction, seed=split_seed)
        rows = [row for row in rows if (row["patient_id"] in validation) == (split == "val")]
    images: dict[str, list[dict]] = {}
    for row in rows:  # several abnormalities of one image share its subject id
        images.setdefault(subject_of(row["image file path"]), []).append(row)
    return dict(sorted(images.items()))


# ---------------------------------------------------------------------------------------------------------------------
# The download tree

class CbisTree:
    """Finds the DICOM files of a subject, in the classic (UID folders) or current (NBIA retriever) layout."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: CBIS-DDSM data root not found; pass the folder holding the DICOM tree")
        self.folders: dict[str, list[Path]] = {}  # subject -> series folders, from metadata.csv files
        self.bases = [self.root, self.root / "CBIS-DDSM", self.root / "DOI"]  # DOI/: older retriever versions
        for metadata in [self.root / "metadata.csv", *sorted(self.root.glob("*/metadata.csv"))]:
            if metadata.is_file():
                self._read_metadata(metadata)
                self.bases += [metadata.parent, metadata.parent / "CBIS-DDSM"]

    def _read_metadata(self, path: Path) -> None:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            # The retriever writes "Subject ID,...,File Location"; some tools rewrite them as subject_id, file_location.
            header = [name.strip().lower().replace(" ", "_") for name in next(reader, [])]
            if "subject_id" not in header or "file_location" not in header:
                raise DataError(f"{path}: no 'Subject ID'/'File Location' columns; is this the NBIA retriever's "
                                "metadata.csv?")
            subject, location = header.index("subject_id"), header.index("file_location")
            for cells in reader:
                if len(cells) > max(subject, location):
                    relative = cells[location].strip().replace("\\", "/").removeprefix("./")
                    self.folders.setdefault(cells[subject].strip(), []).append(path.parent / relative)

    def relative(self, path: Path) -> str:
        """`path` as the user sees it under the data root."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def files(self, subject: str) -> list[Path]:
        """All .dcm files of a subject, sorted; empty if the subject is not on disk."""
        folders = self.folders.get(subject) or [base / subject for base in self.bases]
        return sorted({file for folder in folders if folder.is_dir() for file in folder.rglob("*.dcm")})


def _full_image(files: list[Path], csv_path: str) -> Path | None:
    """The full mammogram among a subject's files; several (merged downloads) are told apart by series UID."""
    if len(files) == 1:
        return files[0]
    series = csv_path.replace("\\", "/").split("/")[-2]  # classic folder name, or its last 5 digits in the current one
    matches = [f for f in files if series in f.parts or f.parent.name.endswith("-" + series[-5:])]
    if len({(f.parent.name, f.name) for f in matches}) == 1:  # one file, or copies of it from repeated downloads
        return matches[0]
    return None


def check_mammogram(tree: CbisTree, rows: list[dict]) -> tuple[Path, list[list[Path]], list[tuple[dict, str]]]:
    """Header-only check of one image and its abnormality rows: (full image, mask candidates per row, skipped).

    skipped lists (row, 'kind: detail'); if it is not empty the image must not be used.
    """
    image_path = rows[0]["image file path"]
    files = tree.files(subject_of(image_path))
    full = _full_image(files, image_path)
    if full is None:
        reason = (f"full mammogram ambiguous: {len(files)} DICOM files and none in series {image_path.split('/')[-2]}"
                  if files else f"full mammogram missing: no DICOM for {subject_of(image_path)}")
        return Path(), [], [(row, reason) for row in rows]
    try:
        shape = dicom_shape(full)
    except DataError as error:
        return full, [], [(row, f"full mammogram unusable: {error}") for row in rows]
    candidates, problems = [], []
    for row in rows:
        subjects = {subject_of(row["ROI mask file path"]), subject_of(row["cropped image file path"])}
        files = sorted({file for subject in subjects for file in tree.files(subject)})
        shapes = {}
        for file in files:
            try:
                shapes[file] = dicom_shape(file)
            except DataError as error:
                shapes[file] = str(error)
        masks = [file for file in files if shapes[file] == shape]
        candidates.append(masks)
        if not files:
            problems.append((row, f"ROI files missing: no DICOM for {' or '.join(sorted(subjects))}"))
        elif not masks:
            found = "; ".join(f"{tree.relative(f)} {'x'.join(map(str, s)) if isinstance(s, tuple) else s}"
                              for f, s in shapes.items())
            problems.append((row, f"no full-size mask: no ROI file is {shape[0]}x{shape[1]} like the image "
                                  f"(missing, or of another size) ({found})"))
    if problems:  # one unusable abnormality makes the merged mask incomplete: skip the whole image
        bad = {id(row) for row, _ in problems}
        problems += [(row, "image skipped: another abnormality of this image has no usable mask")
                     for row in rows if id(row) not in bad]
    return full, candidates, problems


def load_mammogram(full: Path, candidates: list[list[Path]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Decode a checked image and one binary mask per abnormality (the first full-size candidate that is binary)."""
    image = read_dicom(full)
    masks = []
    for files in candidates:
        mask = next((m for m in map(read_mask, files) if m is not None), None)
        if mask is None:
            raise DataError(f"{full}: none of its full-size ROI files {[str(f) for f in files]} is a mask (values 0 "
                            "and 255, not all 0); delete or re-download them")
        masks.append(mask)
    return image, masks


# ---------------------------------------------------------------------------------------------------------------------
# mini-MIAS

MIAS_MASSES = ("CIRC", "SPIC", "MISC")
MIAS_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test, of patients


def read_gray(path: Path) -> np.ndarray:
    """An 8- or 16-bit grayscale image file (PGM, PNG) as (H, W) float32 in [0, 1]."""
    try:
        with Image.open(path) as image:
            mode, pixels = image.mode, np.asarray(image)
    except OSError as error:
        raise DataError(f"{path}: cannot read the image ({error})") from error
    if mode not in ("L", "I;16", "I;16B", "I;16L"):
        raise DataError(f"{path}: image mode {mode}; expected 8- or 16-bit grayscale")
    return pixels.astype(np.float32) / (255 if mode == "L" else 65535)


def load_mias(path: Path, circles: list[tuple[int, int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image and one filled-circle mask per (x, y, radius); Info.txt's origin is the bottom-left corner."""
    image = read_gray(path)
    rows, cols = np.ogrid[:image.shape[0], :image.shape[1]]
    return image, [(rows - (image.shape[0] - y)) ** 2 + (cols - x) ** 2 <= r * r for x, y, r in circles]


def read_mias(root: Path, split: str, *, include_normals: bool = False, split_seed: int = 0
              ) -> tuple[list[tuple[str, Path, list[tuple[int, int, int]]]], list[tuple[str, int, str, str]]]:
    """(records (mdb id, image file, circles), skipped (file, row, id, reason)) for one split of mini-MIAS.

    Patients are left/right pairs (mdb001 + mdb002, ...); those with a mass and the others are shuffled separately
    with split_seed and cut 60/20/20, so the split never depends on which files are present or on include_normals.
    """
    info = root / "Info.txt"
    if not info.is_file():
        raise DataError(f"{info}: not found; mias needs the mini-MIAS Info.txt and mdbNNN.pgm images in the data root")
    lines: dict[str, list[tuple[int, list[str]]]] = {}
    for number, line in enumerate(info.read_text(errors="replace").splitlines(), start=1):
        fields = line.split()
        if fields and re.fullmatch(r"mdb\d{3}", fields[0]):
            if len(fields) < 3:
                raise DataError(f"{info}: line {number} has no abnormality class: {line!r}")
            lines.setdefault(fields[0], []).append((number, fields))

    def patient(ref: str) -> int:
        return (int(ref[3:]) + 1) // 2

    with_mass = {patient(ref) for ref, entries in lines.items() if any(f[2] in MIAS_MASSES for _, f in entries)}
    chosen = set()
    for group in (sorted(with_mass), sorted({patient(ref) for ref in lines} - with_mass)):
        order = np.random.default_rng(split_seed).permutation(group)
        cuts = np.round(np.cumsum(MIAS_FRACTIONS) * len(group)).astype(int)
        chosen |= set(np.split(order, cuts[:-1])[SPLITS.index(split)].tolist())
    records, skipped = [], []
    for ref, entries in sorted(lines.items()):
        masses = [(number, fields) for number, fields in entries if fields[2] in MIAS_MASSES]
        normal = all(fields[2] == "NORM" for _, fields in entries)
        if patient(ref) not in chosen or not (masses or (include_normals and normal)):
            continue
        path = next((p for d in (root, root / "images") for p in (d / f"{ref}.pgm", d / f"{ref}.png") if p.is_file()),
                    None)
        bad = [number for number, fields in masses if len(fields) < 7 or not all(v.isdigit() for v in fields[4:7])]
        if path is None or bad:
            why = (f"image file missing: no {ref}.pgm or {ref}.png in the root or root/images" if path is None
                   else f"no coordinates: line {bad[0]} gives no centre x, y and radius")
            skipped += [(info.name, number, ref, why) for number, _ in (masses or entries)]
            continue
        records.append((ref, path, [tuple(int(v) for v in fields[4:7]) for _, fields in masses]))
    return records, skipped


# ---------------------------------------------------------------------------------------------------------------------
# Mammogram preprocessing

def _largest_component(foreground: np.ndarray) -> np.ndarray:
    """Largest 8-connected region of a small bool image. Each pixel starts with its own id; every round it takes the
    largest id in its 3x3 neighbourhood, then the id held by the pixel that id names (pointer jumping), so each
    region settles on its largest id within a few rounds instead of one round per pixel of its diameter."""
    height, width = foreground.shape
    labels = np.where(foreground, np.arange(1, height * width + 1).reshape(height, width), 0)
    while True:
        padded = np.pad(labels, 1)
        grown = np.maximum.reduce([padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)])
        grown = np.where(foreground, grown.ravel()[np.maximum(grown, 1) - 1], 0)
        if np.array_equal(grown, labels):
            break
        labels = grown
    values, counts = np.unique(labels[foreground], return_counts=True)
    return labels == values[counts.argmax()] if values.size else foreground


def _breast_box(image: np.ndarray, masks: list[np.ndarray]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the largest bright region (labels and scanner marks are smaller), widened to
    contain every lesion so a crop never cuts one."""
    step = max(1, max(image.shape) // 256)
    small = image[::step, ::step]
    low, high = np.percentile(small, (1, 99))
    breast = _largest_component(small > low + 0.1 * (high - low))
    rows, cols = np.flatnonzero(breast.any(1)) * step, np.flatnonzero(breast.any(0)) * step
    if rows.size == 0:
        return 0, image.shape[0], 0, image.shape[1]
    top, bottom, left, right = rows[0], rows[-1] + step, cols[0], cols[-1] + step
    for mask in masks:
        mask_rows, mask_cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if mask_rows.size == 0:
            continue
        top, bottom = min(top, mask_rows[0]), max(bottom, mask_rows[-1] + 1)
        left, right = min(left, mask_cols[0]), max(right, mask_cols[-1] + 1)
    return int(top), int(min(bottom, image.shape[0])), int(left), int(min(right, image.shape[1]))


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize one lesion's mask and keep pixels at least half covered; a lesion too small for that keeps its
    best-covered pixel (or the pixel holding its centre), because Dice punishes a lesion that disappears."""
    coverage = np.asarray(Image.fromarray(np.where(mask, np.uint8(255), np.uint8(0))).resize(size[::-1], Image.BOX))
    resized = coverage >= 128
    if not resized.any() and mask.any():
        if coverage.max() > 0:
            resized = coverage == coverage.max()
        else:
            row, col = np.argwhere(mask).mean(0)
            resized[int(row * size[0] / mask.shape[0]), int(col * size[1] / mask.shape[1])] = True
    return resized


def faces_right(image: np.ndarray) -> bool:
    """True when the breast is on the right: the right half of the (H, W) image is the brighter one."""
    half = image.shape[1] // 2
    return bool(image[:, -half:].sum() > image[:, :half].sum())


def fitted_size(original: tuple[int, int], size: tuple[int, int], zoom: float = 1.0) -> tuple[int, int]:
    """(h, w) of an (H, W) image scaled to just fit inside `size`, times `zoom`. At zoom 1 this is the content,
    top-left, of a letterbox: keep_aspect here, and data.transform_voc's evaluation, which prediction crops back out."""
    scale = min(size[0] / original[0], size[1] / original[1]) * zoom
    return max(1, round(original[0] * scale)), max(1, round(original[1] * scale))


def stretch_contrast(image: np.ndarray) -> np.ndarray:
    """Map the image's 0.5th..99.5th percentiles onto [0, 1] (clipped): every mammogram a model sees, in training or
    prediction, real or synthetic, spans the same range whatever its scanner, bit depth or exposure."""
    low, high = np.percentile(image, (0.5, 99.5))
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def preprocess_mammogram(image: np.ndarray, masks: list[np.ndarray], size: tuple[int, int], *, orient: bool = True,
                         crop_breast: bool = False, keep_aspect: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution image (H, W) in [0, 1] and one bool mask per lesion -> (size float32 image, size uint8 mask)."""
    if crop_breast:
        top, bottom, left, right = _breast_box(image, masks)
        image, masks = image[top:bottom, left:right], [mask[top:bottom, left:right] for mask in masks]
    inner = fitted_size(image.shape, size) if keep_aspect else size
    pixels = torch.from_numpy(np.ascontiguousarray(image))[None, None]  # (1, 1, H, W)
    resized = F.interpolate(pixels, size=inner, mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    resized = stretch_contrast(resized)
    mask = np.zeros(inner, dtype=bool)
    for lesion in masks:
        mask |= _resize_mask(lesion, inner)
    if orient and faces_right(resized):  # mirror it to the left
        resized, mask = resized[:, ::-1], mask[:, ::-1]
    out_image, out_mask = np.zeros(size, np.float32), np.zeros(size, np.uint8)
    out_image[:inner[0], :inner[1]], out_mask[:inner[0], :inner[1]] = resized, mask  # pad right/bottom
    return out_image, out_mask
