"""Your own data: a folder of images and masks, the way INbreast, CSAW-S or a hospital's exports are used once
converted (the thesis' pipeline, §4.1, on any mammograms).

    DIR/images/<stem>.<png|jpg|tif|pgm|dcm>   8 or 16 bit, gray (RGB is read as its luminance); DICOMs as they come
    DIR/masks/<stem>.png                      the same stem; binary (0/255 or 0/1), or class indices 0..K-1 with
                                              255 = ignore for a K-class model
    DIR/split.csv  (optional)                 columns file,split[,group]: split train/val/test fixes the split;
                                              group (a patient, say) keeps its images on one side of any split

  * folder_items   the pairs, each with its group (split.csv's, else the image itself) and its fixed split, if any;
                   an image without a mask, or with a mask of another size, is skipped and reported.
  * load_folder_item  one pair -> (image (H, W) float32 in [0, 1], one bool mask per class, their class labels);
                   mask values that fit neither convention raise DataError naming the file and the values.

    items, skipped = folder_items(Path("/data/inbreast"))
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from mammograms import IMAGE_SUFFIXES, DataError, dicom_shape, is_dicom, read_image_file

SPLIT_NAMES = ("train", "val", "test")


class FolderItem(NamedTuple):
    stem: str
    image: Path
    mask: Path
    group: str  # split.csv's group, else the stem: every group stays on one side of a split
    split: str | None  # split.csv's split, None when the split is drawn (data.py)


def read_split_csv(path: Path) -> dict[str, dict[str, str]]:
    """split.csv as {stem: {"split": ..., "group": ...}}; the file column may hold a name or a stem."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        if "file" not in columns or not {"split", "group"} & set(columns):
            raise DataError(f"{path}: needs a 'file' column and a 'split' and/or 'group' column (found {columns})")
        rows = {}
        for number, row in enumerate(reader, start=2):
            row = {key.strip().lower(): (value or "").strip() for key, value in row.items() if key}
            split = row.get("split", "")
            if split and split not in SPLIT_NAMES:
                raise DataError(f"{path}: line {number}: split {split!r}; use train, val or test")
            rows[Path(row["file"]).stem if Path(row["file"]).suffix.lower() in IMAGE_SUFFIXES else row["file"]] = row
    return rows


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels."""
    if is_dicom(path):
        return dicom_shape(path)
    with Image.open(path) as image:
        return image.height, image.width


def folder_items(root: Path) -> tuple[list[FolderItem], list[tuple[str, int, str, str]]]:
    """(usable pairs, skipped as (file, row, stem, reason)) of DIR/images + DIR/masks (+ DIR/split.csv)."""
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{root}: a folder dataset needs {images_dir} and {masks_dir} (the same file stem in each)")
    split_csv = root / "split.csv"
    fixed = read_split_csv(split_csv) if split_csv.is_file() else {}
    items, skipped = [], []
    for image in sorted(p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        if image.suffix.lower() not in IMAGE_SUFFIXES and not is_dicom(image):
            continue
        stem = image.stem if image.suffix.lower() in IMAGE_SUFFIXES else image.name
        mask = masks_dir / f"{stem}.png"
        try:
            problem = "" if mask.is_file() else f"mask missing: no {mask}"
            if not problem and _image_size(mask) != _image_size(image):
                problem = (f"mask size mismatch: {mask.name} is {'x'.join(map(str, _image_size(mask)[::-1]))}, the "
                           f"image {'x'.join(map(str, _image_size(image)[::-1]))}")
        except (OSError, DataError) as error:  # an unreadable header: reported like a missing file
            problem = f"unreadable: {error}"
        if problem:
            skipped.append((str(image.relative_to(root)), 0, stem, problem))
            continue
        row = fixed.get(stem, {})
        items.append(FolderItem(stem, image, mask, row.get("group") or stem, row.get("split") or None))
    listed = [stem for stem, row in fixed.items() if row.get("split") and stem not in {i.stem for i in items}]
    skipped += [("split.csv", 0, stem, "listed in split.csv, but no usable image and mask") for stem in listed]
    return items, skipped


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """A mask PNG as (H, W) uint8 labels: 0/1 for a binary model (from 0/255 or 0/1), class indices (255 = ignore)
    for a num_classes model; DataError naming the file and the values that fit neither."""
    with Image.open(path) as mask:
        if mask.mode not in ("1", "L", "P", "I;16", "I"):
            raise DataError(f"{path}: mask mode {mask.mode}; save a single-channel PNG (0/255, 0/1 or class indices)")
        values = np.asarray(mask)
    found = np.unique(values)
    if num_classes == 1:
        if set(found.tolist()) <= {0, 1} or set(found.tolist()) <= {0, 255}:
            return (values > 0).astype(np.uint8)
        raise DataError(f"{path}: mask values {found[:8].tolist()}; a binary mask holds 0/255 or 0/1")
    bad = np.setdiff1d(found, [*range(num_classes), 255])
    if bad.size:
        raise DataError(f"{path}: mask values {bad[:8].tolist()} are not classes 0-{num_classes - 1} or 255 (ignore)")
    return values.astype(np.uint8)


def load_folder_item(item: FolderItem, num_classes: int) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """(image (H, W) float32 in [0, 1], one bool mask per label present, those labels) of one pair."""
    pixels, _, _ = read_image_file(item.image)
    if pixels.ndim == 3:  # RGB -> luminance (ITU-R 601, as PIL's "L")
        pixels = pixels @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    labels = read_mask(item.mask, num_classes)
    present = [label for label in np.unique(labels).tolist() if label != 0]
    return pixels, [labels == label for label in present], present
