"""Your own data (thesis §4.1's pipeline on any mammograms, e.g. INbreast or CSAW-S converted):
DIR/images/ and DIR/masks/ with pairs at the same path (masks as PNG: 0/255 or 0/1, or class
indices with 255 = ignore), and an optional DIR/split.csv (file,split[,group]); docs/data.md.

    items, skipped, fixed = folder_items(Path("/data/inbreast"))
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from PIL import Image

from .mammograms import IMAGE_SUFFIXES, DataError, dicom_shape, is_dicom, open_csv, read_image_file

SPLIT_NAMES = ("train", "val", "test")


class FolderItem(NamedTuple):
    stem: str  # the image's id: its path under images/ without the suffix, "/" between folders
    image: Path
    mask: Path
    # split.csv's group, else the id (never a folder: that would guess); it stays on one side
    group: str
    split: str | None  # split.csv's split; None: the split is drawn (data.py)


def image_id(relative: str) -> str:
    """The id of a path under images/ (or split.csv's file): "/" between folders, no suffix."""
    path = PurePosixPath(relative.replace("\\", "/"))  # a split.csv written on Windows
    return str(path.with_suffix("") if path.suffix.lower() in IMAGE_SUFFIXES else path)


def read_split_csv(path: Path) -> dict[str, dict[str, str]]:
    """split.csv as {image id: {"split", "group", "line"}}; DataError for rows that disagree."""
    with open_csv(path) as file:
        reader = csv.DictReader(file)
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        if "file" not in columns or not {"split", "group"} & set(columns):
            raise DataError(f"{path}: needs a 'file' column and a 'split' and/or 'group' column "
                            f"(found {columns})")
        rows, splits_of_group = {}, {}
        for number, row in enumerate(reader, start=2):
            row = {key.strip().lower(): (value or "").strip() for key, value in row.items() if key}
            split, key = row.get("split", ""), image_id(row["file"])
            if split and split not in SPLIT_NAMES:
                raise DataError(f"{path}: line {number}: split {split!r}; use train, val or test")
            row["line"] = str(number)
            earlier = rows.get(key, {})
            for column in ("split", "group") if key in rows else ():
                if earlier.get(column, "") != row.get(column, ""):
                    raise DataError(f"{path}: lines {earlier['line']} and {number} give {key} "
                                    f"different {column}s ({earlier.get(column, '')!r}, "
                                    f"{row.get(column, '')!r}): keep one row per image")
            rows[key] = row
            if split:
                group = row.get("group") or key
                first = splits_of_group.setdefault(group, (split, number))
                if first[0] != split:
                    raise DataError(f"{path}: group {group!r} is in {first[0]} (line {first[1]}) "
                                    f"and {split} (line {number}): a patient on both sides of the "
                                    "split leaks into its scores; give all its rows one split")
    return rows


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels."""
    if is_dicom(path):
        return dicom_shape(path)
    with Image.open(path) as image:
        return image.height, image.width


def _files_under(folder: Path) -> list[Path]:
    """Every file below `folder`, hidden files and folders left out, sorted. A linked folder is
    followed where it leads elsewhere (a patient's images kept on another disk), not where it
    leads inside `folder` (read under its own name already) or above it; each real folder once."""
    top, files, seen = os.path.realpath(folder), [], set()

    def elsewhere(path: str) -> bool:
        real = os.path.realpath(path)
        return not os.path.islink(path) or os.path.commonpath([real, top]) not in (real, top)

    for parent, subfolders, names in os.walk(folder, followlinks=True):
        if os.path.realpath(parent) in seen:  # two links to one folder elsewhere, or a loop there
            subfolders[:] = []
            continue
        seen.add(os.path.realpath(parent))
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                               and elsewhere(os.path.join(parent, name)))
        files += [Path(parent) / name for name in names if not name.startswith(".")]
    return sorted(file for file in files if file.is_file())


def _same_stem(mask: Path, root: Path, listings: dict[Path, dict[str, list[str]]]) -> list[str]:
    """The files of `mask`'s folder with its stem, any suffix, as paths under root."""
    if mask.parent not in listings:  # each folder listed once, however many masks it lacks
        listings[mask.parent] = {}
        for file in mask.parent.iterdir() if mask.parent.is_dir() else ():
            names = listings[mask.parent].setdefault(file.stem, [])
            names.append(file.relative_to(root).as_posix())
    return sorted(name for name in listings[mask.parent].get(mask.stem, [])
                  if (root / name).is_file())


def _misnamed_masks(mask: Path, root: Path, listings: dict[Path, dict[str, list[str]]]) -> str:
    """'; found masks/x.jpg: ...' when masks/ holds `mask`'s stem with another suffix, else ''."""
    found = _same_stem(mask, root, listings)
    return (f"; found {', '.join(found)}: masks must be PNG (lossless), named {mask.name}"
            if found else "")


def folder_items(root: Path) -> tuple[list[FolderItem], list[tuple[str, int, str, str]], Counter]:
    """(usable pairs, skipped (file, row, id, reason), split.csv's rows per split) of root."""
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{root}: a folder dataset needs {images_dir} and {masks_dir} (the same "
                        "file stem in each)")
    split_csv = root / "split.csv"
    fixed = read_split_csv(split_csv) if split_csv.is_file() else {}
    listed = Counter(row["split"] for row in fixed.values() if row.get("split"))
    images: dict[str, list[Path]] = {}
    for image in _files_under(images_dir):
        if image.suffix.lower() in IMAGE_SUFFIXES or is_dicom(image):
            images.setdefault(image_id(image.relative_to(images_dir).as_posix()), []).append(image)
    items, skipped, listings = [], [], {}
    for stem, files in images.items():
        if len(files) > 1:  # both would pair with one mask
            count = "two" if len(files) == 2 else len(files)
            names = ", ".join(file.name for file in files)
            skipped += [(str(file.relative_to(root)), 0, stem, f"stem shared: {count} images share "
                         f"the stem {stem} ({names}): rename one") for file in files]
            continue
        image, mask, row = files[0], masks_dir / f"{stem}.png", fixed.get(stem, {})
        if not mask.is_file():  # a.PNG, a.Png, as some tools name them
            mask = next((root / name for name in _same_stem(mask, root, listings)
                         if name.lower().endswith(".png")), mask)
        try:
            problem = ("" if mask.is_file() else
                       f"mask missing: no {mask}{_misnamed_masks(mask, root, listings)}")
            if not problem and _image_size(mask) != _image_size(image):
                problem = (f"mask size mismatch: {mask.name} is "
                           f"{'x'.join(map(str, _image_size(mask)[::-1]))}, the image "
                           f"{'x'.join(map(str, _image_size(image)[::-1]))}")
            if not problem and listed and not row.get("split"):  # split.csv fixes every image's
                problem = ("split.csv gives no split for it: give it one, split.csv fixes the "
                           "split of every image" if row else
                           "not in split.csv: split.csv gives the split of every image")
        except (OSError, DataError) as error:  # an unreadable header: reported like a missing file
            problem = f"unreadable: {error}"
        if problem:
            skipped.append((str(image.relative_to(root)), 0, stem, problem))
            continue
        items.append(FolderItem(stem, image, mask, row.get("group") or stem,
                                row.get("split") or None))
    usable = {item.stem for item in items}
    nested = {}  # a bare name in split.csv for an image in a subfolder: say how to name it
    for stem in images:
        nested.setdefault(stem.rsplit("/", 1)[-1], []).append(stem)
    for stem, row in fixed.items():  # an image found but skipped has its own row, with its reason
        if row.get("split") and stem not in usable and stem not in images:
            hint = "" if "/" in stem or stem in images else ", ".join(nested.get(stem, []))
            skipped.append(("split.csv", int(row["line"]), stem,
                            "listed in split.csv, but no usable image and mask"
                            + (f": images/ holds {hint}; name it by its path under images/"
                               if hint else "")))
    return items, skipped, listed


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """A mask PNG as (H, W) uint8: 0/1 (from 0/255 or 0/1), or class indices if num_classes > 1."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("1", "L", "P", "I;16", "I"):
                raise DataError(f"{path}: mask mode {mask.mode}; save a single-channel PNG (0/255, "
                                "0/1 or class indices)")
            values = np.asarray(mask)
            if num_classes == 1 and mask.mode == "P":  # a palette's indices are in any order:
                gray = np.asarray(mask.convert("L"))  # Pillow's own black/white puts white at 0
                values = gray if set(np.unique(gray).tolist()) <= {0, 255} else values
    except (OSError, Image.DecompressionBombError) as error:  # truncated, not an image, too large
        raise DataError(f"{path}: cannot read the mask ({error})") from None
    found = np.unique(values)
    if num_classes == 1:
        if set(found.tolist()) <= {0, 1} or set(found.tolist()) <= {0, 255}:
            return (values > 0).astype(np.uint8)
        raise DataError(f"{path}: mask values {found[:8].tolist()}; a binary mask holds 0/255 or "
                        "0/1")
    bad = np.setdiff1d(found, [*range(num_classes), 255])
    if bad.size:
        raise DataError(f"{path}: mask values {bad[:8].tolist()} are not classes "
                        f"0-{num_classes - 1} or 255 (ignore)")
    return values.astype(np.uint8)


def check_class_masks(items: list[FolderItem], num_classes: int, sample: int = 8) -> None:
    """DataError when the first `sample` masks of a K-class set are binary 0/255 ones."""
    values = set()
    for item in items[:sample]:
        try:
            values |= set(np.unique(read_mask(item.mask, num_classes)).tolist())
        except DataError:  # an unusable mask is left out, and listed, when the images are prepared
            continue
    # their lesions would be ignored (255); one such mask is fine: a normal image, an ignored area
    if 255 in values and values <= {0, 255}:
        raise DataError(f"{items[0].mask.parent}: the first {min(sample, len(items))} masks hold "
                        f"only 0 and 255, no class 1-{num_classes - 1}: binary 0/255 masks, whose "
                        f"lesions --num-classes {num_classes} would ignore (255); train without "
                        "--num-classes (binary), or save class indices")


def load_folder_item(item: FolderItem,
                     num_classes: int) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """(image (H, W) float32 in [0, 1], one bool mask per label present, those labels) of a pair."""
    pixels, _, _ = read_image_file(item.image)
    if pixels.ndim == 3:  # RGB -> luminance (ITU-R 601, as PIL's "L")
        pixels = pixels @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    labels = read_mask(item.mask, num_classes)
    present = [label for label in np.unique(labels).tolist() if label != 0]
    return pixels, [labels == label for label in present], present
