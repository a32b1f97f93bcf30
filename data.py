"""The datasets of the thesis (§4.1, §5, Table 1) behind one entry point: CBIS-DDSM, mini-MIAS,
your own folders, Pascal VOC 2012 and synthetic mammograms. Each builder pairs a reader of readers/
with the items readers/items.py serves (cached preprocessing, normalisation, augmentation, patches);
docs/data.md says what each reads and lists the options.

    train_set = build_dataset("cbis", "/data/cbis", "train", 256)  # image (3, 256, 256), mask
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from readers.cbis import CbisTree, cbis_images, check_mammogram, load_mammogram, subject_of
from readers.folders import check_class_masks, folder_items, load_folder_item, read_split_csv
from readers.items import (MammogramDataset, SegmentationSet, cache_file, cache_folder,
                           prepare_datasets, report_skipped, skipped_listing)
from readers.mammograms import (DataError, augment_mammogram, fitted_size, preprocess_mammogram,
                                read_dicom)
from readers.mias import MiasImage, load_mias, patient_of, read_mias
from readers.patches import BREAST_LEVEL, crop_patch
from readers.splits import SPLITS, check_fold, groups_of_split
from readers.synthetic import synthetic_mammogram
from readers.voc import VOC_CLASSES, VOC_SPLITS, read_voc_label, transform_voc, voc_files

__all__ = ["DataError", "read_dicom", "build_dataset", "preprocess_mammogram", "augment_mammogram",
           "fitted_size", "transform_voc", "VOC_CLASSES", "MammogramDataset", "SyntheticMammograms",
           "VOCSegmentation", "prepare_datasets"]

MIAS_FRACTIONS = (0.6, 0.2, 0.2)  # of the patients, train/val/test: mini-MIAS has no official split
SYNTHETIC_SIZES = {"train": 400, "val": 64, "test": 64}


# ------------------------------------------------------------------------- The mammography datasets

def _cbis_sample(tree: CbisTree, rows: list[dict]) -> tuple[np.ndarray, list[np.ndarray], None]:
    full, candidates, problems = check_mammogram(tree, rows)
    if problems:  # the files changed since the dataset was built
        raise DataError(f"{rows[0]['image file path']}: {problems[0][1]}; rebuild the dataset")
    return (*load_mammogram(full, candidates), None)


def _build_cbis(root: Path, split: str, size: tuple[int, int], *, abnormality: str = "mass",
                csv_dir: str | None = None, val_fraction: float = 0.2, split_seed: int = 0,
                fold: int | None = None, folds: int = 5, cache_dir: str | None = None,
                orient: bool = True, crop_breast: bool = False, keep_aspect: bool = False,
                limit: int | None = None, verbose: bool = True, **common) -> Dataset:
    check_fold("cbis", split, fold, folds)
    kwargs = dict(abnormality=abnormality, val_fraction=val_fraction, split_seed=split_seed)
    if fold is None:
        images = cbis_images(csv_dir or root, split, **kwargs)
    else:  # folds of the official training CSV, by patient; the test CSV stays held out
        images = {**cbis_images(csv_dir or root, "train", **kwargs),
                  **cbis_images(csv_dir or root, "val", **kwargs)}
        patients = {rows[0]["patient_id"]: "" for rows in images.values()}
        chosen = groups_of_split(patients, split, (), split_seed, fold, folds)
        images = {key: rows for key, rows in sorted(images.items())
                  if rows[0]["patient_id"] in chosen}
    tree, cache_dir = CbisTree(root), cache_folder("cbis", root, cache_dir)
    options = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)
    ids, sources, cache_files, skipped, lesions = [], [], [], [], 0
    for image_id, rows in images.items():
        if limit is not None and len(ids) >= limit:
            break
        columns = ("image file path", "ROI mask file path", "cropped image file path")
        subjects = {subject_of(row[column]) for row in rows for column in columns}
        files = [f for s in sorted(subjects) for f in tree.files(s)]
        entry = cache_file(cache_dir, image_id, files, options)
        # a cached image was checked when it was built
        problems = [] if entry.is_file() else check_mammogram(tree, rows)[2]
        if problems:
            skipped += [(row["csv"], row["row"], subject_of(row["ROI mask file path"]), why)
                        for row, why in problems]
            continue
        ids.append(image_id)
        sources.append((tree, rows))
        cache_files.append(entry)
        lesions += len(rows)
    counts = (f"{len(ids)} images, {lesions} lesion masks ({lesions - len(ids)} merged into images "
              "with several lesions)")
    # Mass and calcification builds share the cache folder, so each keeps its own list.
    listing = skipped_listing(cache_dir, f"cbis-{abnormality}", root, split, fold, folds)
    report_skipped("cbis", split, counts, skipped, listing, verbose)
    return MammogramDataset(ids, sources, cache_files, _cbis_sample, split=split, **options,
                            **common)


def _mias_sample(image: MiasImage) -> tuple[np.ndarray, list[np.ndarray], None]:
    return (*load_mias(image), None)


def _build_mias(root: Path, split: str, size: tuple[int, int], *, include_normals: bool = True,
                split_seed: int = 0, fold: int | None = None, folds: int = 5,
                cache_dir: str | None = None, orient: bool = True, crop_breast: bool = False,
                keep_aspect: bool = False, limit: int | None = None, verbose: bool = True,
                **common) -> Dataset:
    check_fold("mias", split, fold, folds)
    images, skipped, strata = read_mias(root)
    chosen = groups_of_split(strata, split, MIAS_FRACTIONS, split_seed, fold, folds)
    images = [image for image in images
              if image.patient in chosen and (include_normals or not image.normal)][:limit]
    skipped = [row for row in skipped if patient_of(row[2]) in chosen]  # each split lists its own
    cache_dir = cache_folder("mias", root, cache_dir)
    options = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)
    # The circles come from Info.txt, not from the image file, so they are part of the cache key;
    # so is how an outline is read (entries from before 0/1 outlines were read right: not reused).
    cache_files = [cache_file(cache_dir, image.ref,
                              [image.path] + [image.mask] * (image.mask is not None),
                              dict(options, circles=image.circles, outline="0/1 or 0/255"))
                   for image in images]
    outlined = sum(image.mask is not None for image in images)
    normal = sum(image.normal for image in images)
    counts = (f"{len(images)} images: {outlined} with outline masks ({root / 'masks'}), "
              f"{len(images) - outlined - normal} with Info.txt's circles, {normal} normal")
    listing = skipped_listing(cache_dir, "mias", root, split, fold, folds)
    report_skipped("mias", split, counts, skipped, listing, verbose)
    return MammogramDataset([image.ref for image in images], [(image,) for image in images],
                            cache_files, _mias_sample, split=split, **options, **common)


def _build_folder(root: Path, split: str, size: tuple[int, int], *, num_classes: int = 1,
                  val_fraction: float = 0.2, split_seed: int = 0, fold: int | None = None,
                  folds: int = 5, cache_dir: str | None = None, orient: bool = True,
                  crop_breast: bool = False, keep_aspect: bool = False,
                  limit: int | None = None, verbose: bool = True, **common) -> Dataset:
    check_fold("folder", split, fold, folds)
    # fixed: split.csv's rows per split; then every item has its split
    items, skipped, fixed = folder_items(root)
    if num_classes > 1 and items:  # the folder's first masks: every split takes the same decision
        check_class_masks(items, num_classes)
    rows = read_split_csv(root / "split.csv") if (root / "split.csv").is_file() else {}
    if fold is not None or not fixed:
        # Drawn over every image found, usable or skipped, so that mending a file later moves no
        # other image between train and val; a fixed test split stays held out of the folds.
        found = {item.stem: (item.group, item.split) for item in items}
        for _, _, stem, _ in skipped:
            row = rows.get(stem, {})
            found.setdefault(stem, (row.get("group") or stem, row.get("split") or None))
        pool = {group: "" for group, fixed_split in found.values() if fixed_split != "test"}
        drawn = split != "test" or fold is not None
        chosen = groups_of_split(pool, split, (1 - val_fraction, val_fraction), split_seed, fold,
                                 folds) if drawn else set()
        items = [item for item in items if item.split != "test" and item.group in chosen]
    else:
        items = [item for item in items if item.split == split]
    missing = fixed and fold is None and split != "test" and not items
    items = items[:limit]
    cache_dir = cache_folder("folder", root, cache_dir)
    options = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)
    # An id holds "/" for an image in a subfolder of images/; the cache keeps one flat folder.
    cache_files = [cache_file(cache_dir, item.stem.replace("/", "__"), [item.image, item.mask],
                              dict(options, classes=num_classes)) for item in items]
    counts = f"{len(items)} images with masks from {root}"
    # A skipped file is listed once: in the split split.csv gives it, else with the training images
    split_of = rows if fixed else {}
    skipped = [row for row in skipped
               if (split_of.get(row[2], {}).get("split") or "train") == split]
    report = skipped_listing(cache_dir, "folder", root, split, fold, folds)
    report_skipped("folder", split, counts, skipped, report, verbose)
    # Else the empty part would read as a wrong data root ("no images found"); raised after the
    # report, which lists the skipped rows. A test part is optional, as a drawn split has none.
    if missing:
        why = (f"lists no {split} images: add rows with split {split}" if not fixed[split] else
               f"lists {fixed[split]} {split} image{'s' * (fixed[split] > 1)}, none usable: "
               f"{report} says why")
        raise DataError(f"{root / 'split.csv'} {why}, or leave the split column empty to draw an "
                        f"{round(100 * (1 - val_fraction))}/{round(100 * val_fraction)} split")
    return MammogramDataset([item.stem for item in items], [(item, num_classes) for item in items],
                            cache_files, load_folder_item, split=split, num_classes=num_classes,
                            **options, **common)


# --------------------------------------------------------- Synthetic mammograms and Pascal VOC 2012

class SyntheticMammograms(SegmentationSet):
    """Synthetic mammograms generated on the fly; item i of a split is the same on every call."""

    def __init__(self, split: str, size: tuple[int, int], *, num_images: int | None = None,
                 mass_probability: float = 0.8, limit: int | None = None, verbose: bool = True,
                 **common):
        super().__init__(split=split, **common)
        self.size, self.split_index = size, SPLITS.index(split)
        self.mass_probability = mass_probability
        count = SYNTHETIC_SIZES[split] if num_images is None else num_images
        count = count if limit is None else min(count, limit)
        self.ids = [f"synthetic-{split}-{i:05d}" for i in range(count)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # the training images follow --seed; the validation and test images are the same for every
        # seed (those of seed 0), so that runs of other seeds are scored on the same images
        rng = np.random.default_rng([self.seed if self.split == "train" else 0, self.split_index,
                                     index])
        image, mask = synthetic_mammogram(self.size, rng, mass_probability=self.mass_probability)
        rng = self._rng(index) if self.augment or self.patch else None
        if self.patch:
            image, mask = crop_patch(image, mask, self.patch, self.lesion_patches, rng,
                                     level=BREAST_LEVEL)
        if self.augment:
            image, mask = augment_mammogram(image, mask, rng, mirror=False)
        return self._output(image, mask)


class VOCSegmentation(SegmentationSet):
    """Pascal VOC 2012 segmentation (readers/voc.py): RGB images, class labels, 255 = ignore."""

    num_classes = len(VOC_CLASSES)

    def __init__(self, root: Path, split: str, size: tuple[int, int], *, in_channels: int = 3,
                 limit: int | None = None, verbose: bool = True, **common):
        if in_channels != 3:
            raise DataError(f"voc: in_channels must be 3 (Pascal VOC images are RGB), got "
                            f"{in_channels}")
        super().__init__(split=split, in_channels=3, **common)
        self.ids, self.images, self.labels = voc_files(root, split, limit)
        self.size = size
        if verbose:
            print(f"voc {split}: {len(self.ids)} images from {root}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            with Image.open(self.images[index]) as file:
                image = file.convert("RGB")
        except OSError as error:
            raise DataError(f"{self.images[index]}: cannot read the image ({error})") from error
        label = Image.fromarray(read_voc_label(self.labels[index]))
        rng = self._rng(index) if self.augment else None
        image, label = transform_voc(image, label, self.size, rng)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255  # (3, H, W)
        return self._output(pixels, np.asarray(label))


# --------------------------------------------------------------------------------------------------

def build_dataset(name: str, root: str | os.PathLike | None, split: str,
                  image_size: int | Sequence[int], **options) -> Dataset:
    """The dataset `name` (cbis, mias, folder, voc, synthetic) for `split`, resized to image_size.

    Items are (image float32 (C, H, W) normalised, mask int64 (H, W)); `.ids[i]` names item i and
    `.num_classes` is the model's outputs. The options are listed in docs/data.md."""
    try:
        size = ((int(image_size),) * 2 if isinstance(image_size, (int, np.integer))  # int: the
                else tuple(map(int, image_size)))  # cache key of numpy's 64 is "64", of Python's 64
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"image_size must be an int or an (H, W) pair, got {image_size!r}")
    patch = options.pop("patch_size", None) or size
    patch = (patch, patch) if isinstance(patch, (int, np.integer)) else tuple(patch)
    if len(patch) != 2 or min(patch) < 1 or patch[0] > size[0] or patch[1] > size[1]:
        raise DataError(f"patch_size {patch} must fit in image_size {size} (--patch-size)")
    if patch != size:  # training patches; a patch as large as the image is the thesis' whole image
        if name == "voc":
            raise DataError("voc: patches are for whole mammograms; drop --patch-size")
        options["patch"] = patch
    splits = {"cbis": SPLITS, "mias": SPLITS, "folder": SPLITS, "synthetic": SPLITS,
              "voc": VOC_SPLITS}
    if name not in splits:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(splits)}")
    if split not in splits[name]:
        raise DataError(f"{name}: unknown split {split!r}; choose one of {', '.join(splits[name])}")
    if name == "synthetic":
        if root is not None:
            raise DataError(f"synthetic data is generated, not read: pass no data root (got "
                            f"{root})")
        options.pop("fold", None), options.pop("folds", None)  # generated splits: no folds
        return SyntheticMammograms(split, size, **options)
    if root is None:
        raise DataError(f"{name}: a data root is required (--data-root DIR)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (--data-root)")
    if name == "voc":
        if options.pop("fold", None) is not None:
            raise DataError("voc: no cross-validation folds; Pascal VOC has its own train and val "
                            "lists")
        options.pop("folds", None)
        return VOCSegmentation(root, split, size, **options)
    builders = {"cbis": _build_cbis, "mias": _build_mias, "folder": _build_folder}
    return builders[name](root, split, size, **options)
