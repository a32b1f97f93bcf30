"""Datasets of the thesis (§4.1, §5, Table 1): CBIS-DDSM, mini-MIAS, Pascal VOC 2012 and synthetic mammograms.

    train_set = build_dataset("cbis", "/data/cbis", "train", 256)   # items: (image (3, 256, 256), mask (256, 256))

`build_dataset(name, root, split, image_size, **options)` is the one entry point. Every dataset has `.ids[i]` (what item
i is), `.num_classes` (model output channels: 1 for the binary mammography sets, masks {0, 1}; 21 for VOC, masks
0..20 with 255 = ignore) and yields (image float32 (C, H, W) normalised with `mean`/`std`, mask int64 (H, W)).
Options every dataset takes: `in_channels` (1 = native grayscale; 3 = grayscale replicated to RGB, the default, for
ImageNet encoders; VOC needs 3), `mean`/`std` (ImageNet statistics by default), `augment` (default: on for training
splits only), `seed`, `limit` (the first N items of the split), `verbose`, and for the mammography sets `fold`/`folds`
(cross-validation: "val" is fold k of K by patient, "train" the others; splits.py) and
`patch_size`/`lesion_patches` (each item a crop of that size, a share centred near a lesion:
readers/patches.py, cut from the cache entry). What each reads:

  cbis       the NBIA download with TCIA's case-description CSVs (cbis.py). Masses by default,
             abnormality="calcification" for the other half. "train"/"val" split the official training CSV by patient
             (val_fraction=0.2, split_seed=0), "test" is the official test CSV.
  mias       mini-MIAS (mias.py): outline masks from root/masks/ where they exist, else Info.txt's circles; normal
             images stay in, without a lesion. Split by patient 60/20/20 with a fixed seed, masses and others alike.
  folder     your own images/ and masks/ (folders.py), num_classes=1 (masks 0/255 or 0/1) or K (class indices);
             split.csv's split, else a seeded 80/20 train/val that keeps each group (or image) on one side.
  voc        the root holding VOCdevkit/VOC2012 (voc.py): "train", "val", "trainaug".
  synthetic  root None; num_images (400/64/64), generated on the fly from (seed, split, index) (synthetic.py).

Mammograms are preprocessed once (mammograms.preprocess_mammogram: optional breast crop, breasts mirrored to face left,
the whole image resized to image_size, stretched like the thesis' 256x256 unless keep_aspect=True) and cached in
cache_dir (cache_folder: default $UNET_FUSION_CACHE, or ~/.cache/unet-fusion, then <dataset>-<hash of the root>/,
since data roots are often read-only): one .npz per image, named by a hash of its source files (path, size, mtime)
and of the preprocessing options, so a change to either builds a new entry. Entries are written atomically and are
readable by the group (umask permitting), so a killed run or concurrent workers never leave a broken one and a shared
cache serves a team. Skipped rows are summed up on stdout and listed in
<cache_dir>/skipped_<dataset>-<hash of the root>_<split>.csv.

Augmentation draws from torch's RNG, which sampling.SeededItems seeds for every item: no hidden state. Before a run,
prepare_datasets builds every missing cache entry and leaves out, named, the images that cannot be used.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from readers.cbis import CbisTree, cbis_images, check_mammogram, load_mammogram, subject_of
from readers.folders import check_class_masks, folder_items, load_folder_item, read_split_csv
from readers.mammograms import DataError, augment_mammogram, fitted_size, preprocess_mammogram, read_dicom
from readers.mias import MiasImage, load_mias, patient_of, read_mias
from readers.patches import BREAST_LEVEL, crop_patch
from model import default_normalisation
from readers.splits import SPLITS, check_fold, groups_of_split
from readers.synthetic import synthetic_mammogram
from readers.atomic import atomic_write
from readers.voc import VOC_CLASSES, VOC_SPLITS, read_voc_label, transform_voc, voc_files

__all__ = ["DataError", "read_dicom", "build_dataset", "preprocess_mammogram", "augment_mammogram", "fitted_size",
           "transform_voc", "VOC_CLASSES", "MammogramDataset", "SyntheticMammograms", "VOCSegmentation",
           "prepare_datasets"]

MIAS_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test, of the patients: mini-MIAS has no official split
CACHE_VERSION = 2  # bump when preprocess_mammogram changes, so old cache entries are not reused
CACHE_ENV = "UNET_FUSION_CACHE"  # the cache's base folder, when ~/.cache cannot be written (read-only homes)


def root_hash(root: str | os.PathLike) -> str:
    """What names a dataset root in the shared cache: a hash of its absolute path."""
    return hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]


def cache_folder(name: str, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                 flag: str | None = "--cache-dir") -> Path:
    """The folder of one dataset root's preprocessed images: cache_dir if given (--cache-dir), else
    <$UNET_FUSION_CACHE, or $XDG_CACHE_HOME/unet-fusion, or ~/.cache/unet-fusion>/<name>-<hash of the root>. Checked
    here, so that an unwritable one ends in one line naming it, not in a traceback from a loader worker."""
    if cache_dir is None:
        base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
            "unet-fusion"
        cache_dir = Path(base) / f"{name}-{root_hash(root)}"
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=cache_dir).close()  # the one sure test: create (and at once delete) a file
    except OSError as error:
        where = f"{flag} DIR or ${CACHE_ENV}" if flag else f"${CACHE_ENV}"  # the command's own flag, if any
        raise DataError(f"cache folder {cache_dir} cannot be written ({error.strerror or error}); give a "
                        f"writable one with {where}") from None
    return cache_dir


# ---------------------------------------------------------------------------------------------------------------------
# Datasets

class _SegmentationSet(Dataset):
    """Options shared by every dataset: channels, normalisation, augmentation switch and seed."""

    num_classes = 1

    def __init__(self, *, split: str, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, augment: bool | None = None, seed: int = 0,
                 patch: tuple[int, int] | None = None, lesion_patches: float = 1 / 3):
        if in_channels not in (1, 3):
            raise DataError(f"in_channels must be 1 or 3, got {in_channels}")
        default_mean, default_std = default_normalisation("resnet34", in_channels)  # ImageNet's, as torchvision
        mean, std = tuple(default_mean if mean is None else mean), tuple(default_std if std is None else std)
        if len(mean) != in_channels or len(std) != in_channels:
            raise DataError(f"mean {mean} and std {std} need {in_channels} values each (in_channels={in_channels})")
        self.in_channels, self.seed, self.split = in_channels, seed, split
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        self.augment = split.startswith("train") if augment is None else augment
        self.patch, self.lesion_patches = patch, lesion_patches  # None: the whole image
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def _rng(self, index: int) -> np.random.Generator:
        # torch's RNG differs per DataLoader worker and epoch, so each epoch sees new augmentations.
        return np.random.default_rng([self.seed, index, int(torch.randint(2 ** 62, ()))])

    def _output(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if pixels.ndim == 2:  # grayscale -> (C, H, W), replicated for RGB encoders
            pixels = pixels.expand(self.in_channels, -1, -1)
        return (pixels - self.mean) / self.std, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


class MammogramDataset(_SegmentationSet):
    """Preprocessed mammograms with their masks, cached on disk: the body of "cbis", "mias" and "folder".

    sources[i] is passed to load(), which returns the full-resolution image, one bool mask per lesion (or class) and
    their labels (None: every mask is a lesion, label 1).
    """

    def __init__(self, ids: list[str], sources: list, cache_files: list[Path], load: Callable, *,
                 size: tuple[int, int], orient: bool, crop_breast: bool, keep_aspect: bool, num_classes: int = 1,
                 **common):
        super().__init__(**common)
        self.ids, self.sources, self.cache_files, self.load = ids, sources, cache_files, load
        self.num_classes = num_classes
        self.preprocess = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)

    def preprocessed(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W) float32 in [0, 1] and mask (H, W) uint8 labels, from the cache or built and cached."""
        image, mask = self.cached(index)
        return image.astype(np.float32) / 65535, mask

    def cached(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The cache entry: image (H, W) uint16 (x 65535), mask (H, W) uint8; built if missing."""
        path = self.cache_files[index]
        try:
            with np.load(path) as cached:
                image, mask = cached["image"], cached["mask"]
            if image.shape == mask.shape == self.preprocess["size"]:
                return image, mask
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            pass  # not built yet, or damaged on disk (writes are atomic, so not by a killed run): build it below
        pixels, masks, labels = self.load(*self.sources[index])
        image, mask = preprocess_mammogram(pixels, masks, labels=labels, **self.preprocess)
        quantised = np.round(image * 65535).astype(np.uint16)  # 16 bits keep the film's dynamic range
        buffer = io.BytesIO()
        np.savez(buffer, image=quantised, mask=mask)
        atomic_write(path, buffer.getvalue())
        return quantised, mask  # exactly what a cache hit returns

    def prepare(self, workers: int = 0, *, share: tuple[int, int] = (0, 1)) -> dict[int, str]:
        """Build the cache entries not on disk yet, now rather than in the first epoch: this process's `share` (k, n)
        of them, `workers` DataLoader processes at a time. Returns {index: why it cannot be used} (a mask no model
        can read, a DICOM without its decoder), for leave_out."""
        missing = [index for index, path in enumerate(self.cache_files) if not path.is_file()][share[0]::share[1]]
        if not missing:
            return {}
        loader = DataLoader(_Preparation(self, missing), batch_size=None, num_workers=min(workers, len(missing)))
        return dict(result for result in loader if result[1])

    def leave_out(self, failed: dict[int, str], *, report: bool = True) -> None:
        """Drop the items `failed` names; with `report`, name them in one line and list them in the cache folder's
        unreadable_<split>-<hash of the set>.csv (one list per set: folds and abnormalities share a cache)."""
        if not failed:
            return
        unreadable = [(str(self.ids[index]), 0, self.ids[index], reason) for index, reason in sorted(failed.items())]
        digest = hashlib.sha1("\n".join(self.ids).encode()).hexdigest()[:8]
        listing = self.cache_files[min(failed)].parent / f"unreadable_{self.split}-{digest}.csv"
        keep = [index for index in range(len(self)) if index not in failed]
        self.ids, self.sources, self.cache_files = ([items[index] for index in keep]
                                                    for items in (self.ids, self.sources, self.cache_files))
        if report:
            _list_rows(listing, unreadable)
            print(f"{self.split}: {len(failed)} image(s) left out, since they cannot be used ({unreadable[0][3]}"
                  f"{', ...' if len(failed) > 1 else ''}); listed in {listing}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.patch is None:
            image, mask = self.preprocessed(index)
            rng = self._rng(index) if self.augment else None
        else:  # crop the cached uint16 entry, then convert only the patch
            rng, (image, mask) = self._rng(index), self.cached(index)
            image, mask = crop_patch(image, mask, self.patch, self.lesion_patches, rng,
                                     level=BREAST_LEVEL * 65535)
            image = image.astype(np.float32) / 65535
        if self.augment:
            image, mask = augment_mammogram(image, mask, rng, mirror=not self.preprocess["orient"])
        return self._output(image, mask)


class _Preparation(Dataset):
    """MammogramDataset.prepare's work list: item k builds the cache entry of dataset item indices[k] and gives
    (that index, "" or why it cannot be used)."""

    def __init__(self, dataset: MammogramDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, str]:
        try:
            self.dataset.preprocessed(self.indices[k])
            return self.indices[k], ""
        except DataError as error:  # the readers turn every fault of a file into one
            return self.indices[k], str(error)


def prepare_datasets(datasets: list, workers: int, rank: int = 0, world: int = 1) -> None:
    """Build every missing cache entry of the mammogram sets (the others have none) and leave out the images that
    cannot be used. Under torchrun every process first builds its share; then rank 0 alone retries what is still
    missing and decides, and every process leaves out exactly the images it names, so all keep the same set."""
    for dataset in (d for d in datasets if isinstance(d, MammogramDataset)):
        if world > 1:
            dataset.prepare(workers, share=(rank, world))
            torch.distributed.barrier()
        failed = [dataset.prepare(workers) if rank == 0 else None]
        if world > 1:
            torch.distributed.broadcast_object_list(failed, src=0)
        dataset.leave_out(failed[0], report=rank == 0)


def _cache_file(cache_dir: Path, item: str, sources: list[Path], options: dict) -> Path:
    """Cache entry name: item id + hash of the sources (path, size, mtime) and every preprocessing option."""
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in sources]
    key = json.dumps([CACHE_VERSION, stats, options], sort_keys=True, default=str)
    return cache_dir / f"{item}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _list_rows(path: Path, rows: list[tuple]) -> None:
    """Write (file, row, id, reason) rows to the CSV `path`."""
    text = io.StringIO()
    csv.writer(text).writerows([("file", "row", "id", "reason"), *rows])
    atomic_write(path, text.getvalue().encode())


def _listing(cache_dir: Path, name: str, root: Path, split: str) -> Path:
    """The CSV of a split's skipped rows, named by the dataset and its root: caches may be shared."""
    return cache_dir / f"skipped_{name}-{root_hash(root)[:8]}_{split}.csv"


def _report(name: str, split: str, counts: str, skipped: list[tuple], path: Path, verbose: bool) -> None:
    """Write every skipped row to `path` (a CSV) and print a one-line summary."""
    _list_rows(path, skipped)
    if verbose:
        kinds = ", ".join(f"{count} {kind}" for kind, count in Counter(r[3].split(":")[0] for r in skipped).items())
        print(f"{name} {split}: {counts}; skipped rows: {len(skipped)}{f' ({kinds})' if kinds else ''}, listed in "
              f"{path}")


# ---------------------------------------------------------------------------------------------------------------------
# The mammography datasets

def _cbis_sample(tree: CbisTree, rows: list[dict]) -> tuple[np.ndarray, list[np.ndarray], None]:
    full, candidates, problems = check_mammogram(tree, rows)
    if problems:  # the files changed since the dataset was built
        raise DataError(f"{rows[0]['image file path']}: {problems[0][1]}; rebuild the dataset")
    return (*load_mammogram(full, candidates), None)


def _build_cbis(root: Path, split: str, size: tuple[int, int], *, abnormality: str = "mass",
                csv_dir: str | None = None, val_fraction: float = 0.2, split_seed: int = 0, fold: int | None = None,
                folds: int = 5, cache_dir: str | None = None, orient: bool = True, crop_breast: bool = False,
                keep_aspect: bool = False, limit: int | None = None, verbose: bool = True, **common) -> Dataset:
    check_fold("cbis", split, fold, folds)
    kwargs = dict(abnormality=abnormality, val_fraction=val_fraction, split_seed=split_seed)
    if fold is None:
        images = cbis_images(csv_dir or root, split, **kwargs)
    else:  # folds of the official training CSV, by patient; the test CSV stays held out
        images = {**cbis_images(csv_dir or root, "train", **kwargs), **cbis_images(csv_dir or root, "val", **kwargs)}
        patients = {rows[0]["patient_id"]: "" for rows in images.values()}
        chosen = groups_of_split(patients, split, (), split_seed, fold, folds)
        images = {key: rows for key, rows in sorted(images.items()) if rows[0]["patient_id"] in chosen}
    tree, cache_dir = CbisTree(root), cache_folder("cbis", root, cache_dir)
    options = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)
    ids, sources, cache_files, skipped, lesions = [], [], [], [], 0
    for image_id, rows in images.items():
        if limit is not None and len(ids) >= limit:
            break
        subjects = {subject_of(row[column]) for row in rows
                    for column in ("image file path", "ROI mask file path", "cropped image file path")}
        cache_file = _cache_file(cache_dir, image_id, [f for s in sorted(subjects) for f in tree.files(s)], options)
        problems = [] if cache_file.is_file() else check_mammogram(tree, rows)[2]  # a cached image was checked
        if problems:
            skipped += [(row["csv"], row["row"], subject_of(row["ROI mask file path"]), why) for row, why in problems]
            continue
        ids.append(image_id)
        sources.append((tree, rows))
        cache_files.append(cache_file)
        lesions += len(rows)
    # Mass and calcification builds share the cache folder, so each keeps its own list.
    counts = (f"{len(ids)} images, {lesions} lesion masks ({lesions - len(ids)} merged into images with several "
              "lesions)")
    _report("cbis", split, counts, skipped, _listing(cache_dir, f"cbis-{abnormality}", root, split), verbose)
    return MammogramDataset(ids, sources, cache_files, _cbis_sample, split=split, **options, **common)


def _mias_sample(image: MiasImage) -> tuple[np.ndarray, list[np.ndarray], None]:
    return (*load_mias(image), None)


def _build_mias(root: Path, split: str, size: tuple[int, int], *, include_normals: bool = True, split_seed: int = 0,
                fold: int | None = None, folds: int = 5, cache_dir: str | None = None, orient: bool = True,
                crop_breast: bool = False, keep_aspect: bool = False, limit: int | None = None, verbose: bool = True,
                **common) -> Dataset:
    check_fold("mias", split, fold, folds)
    images, skipped, strata = read_mias(root)
    chosen = groups_of_split(strata, split, MIAS_FRACTIONS, split_seed, fold, folds)
    images = [image for image in images if image.patient in chosen and (include_normals or not image.normal)][:limit]
    skipped = [row for row in skipped if patient_of(row[2]) in chosen]  # each split lists its own
    cache_dir = cache_folder("mias", root, cache_dir)
    options = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)
    # The circles come from Info.txt, not from the image file, so they are part of the cache key.
    cache_files = [_cache_file(cache_dir, image.ref, [image.path] + [image.mask] * (image.mask is not None),
                               dict(options, circles=image.circles)) for image in images]
    outlined = sum(image.mask is not None for image in images)
    normal = sum(image.normal for image in images)
    counts = (f"{len(images)} images: {outlined} with outline masks ({root / 'masks'}), "
              f"{len(images) - outlined - normal} with Info.txt's circles, {normal} normal")
    _report("mias", split, counts, skipped, _listing(cache_dir, "mias", root, split), verbose)
    return MammogramDataset([image.ref for image in images], [(image,) for image in images], cache_files,
                            _mias_sample, split=split, **options, **common)


def _build_folder(root: Path, split: str, size: tuple[int, int], *, num_classes: int = 1, val_fraction: float = 0.2,
                  split_seed: int = 0, fold: int | None = None, folds: int = 5, cache_dir: str | None = None,
                  orient: bool = True, crop_breast: bool = False, keep_aspect: bool = False,
                  limit: int | None = None, verbose: bool = True, **common) -> Dataset:
    check_fold("folder", split, fold, folds)
    items, skipped, fixed = folder_items(root)  # fixed: split.csv's rows per split; then every item has its split
    if fold is not None or not fixed:
        pool = [item for item in items if item.split != "test"]  # a fixed test split stays held out of the folds
        chosen = groups_of_split({item.group: "" for item in pool}, split, (1 - val_fraction, val_fraction),
                                 split_seed, fold, folds) if split != "test" or fold is not None else set()
        items = [item for item in pool if item.group in chosen]
    else:
        items = [item for item in items if item.split == split]
    missing = fixed and fold is None and split != "test" and not items
    if num_classes > 1 and items:
        check_class_masks(items, num_classes)
    items = items[:limit]
    cache_dir = cache_folder("folder", root, cache_dir)
    options = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)
    # An id holds "/" for an image in a subfolder of images/; the cache keeps one flat folder.
    cache_files = [_cache_file(cache_dir, item.stem.replace("/", "__"), [item.image, item.mask],
                               dict(options, classes=num_classes)) for item in items]
    counts = f"{len(items)} images with masks from {root}"
    # A skipped file is listed once: in the split split.csv gives it, else with the training images
    split_of = read_split_csv(root / "split.csv") if fixed else {}
    skipped = [row for row in skipped if (split_of.get(row[2], {}).get("split") or "train") == split]
    report = _listing(cache_dir, "folder", root, split)
    _report("folder", split, counts, skipped, report, verbose)
    # Else the empty part would read as a wrong data root ("no images found"); raised after the report, which lists
    # the skipped rows. A test part is optional, as a drawn split has none.
    if missing:
        why = (f"lists no {split} images: add rows with split {split}" if not fixed[split] else
               f"lists {fixed[split]} {split} image{'s' * (fixed[split] > 1)}, none usable: {report} says why")
        raise DataError(f"{root / 'split.csv'} {why}, or leave the split column empty to draw an "
                        f"{round(100 * (1 - val_fraction))}/{round(100 * val_fraction)} split")
    return MammogramDataset([item.stem for item in items], [(item, num_classes) for item in items], cache_files,
                            load_folder_item, split=split, num_classes=num_classes, **options, **common)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic mammograms

SYNTHETIC_SIZES = {"train": 400, "val": 64, "test": 64}


class SyntheticMammograms(_SegmentationSet):
    """Synthetic mammograms generated on the fly; item i of a split is the same on every call."""

    def __init__(self, split: str, size: tuple[int, int], *, num_images: int | None = None,
                 mass_probability: float = 0.8, limit: int | None = None, verbose: bool = True, **common):
        super().__init__(split=split, **common)
        self.size, self.split_index, self.mass_probability = size, SPLITS.index(split), mass_probability
        count = SYNTHETIC_SIZES[split] if num_images is None else num_images
        self.ids = [f"synthetic-{split}-{i:05d}" for i in range(count if limit is None else min(count, limit))]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.split_index, index])
        image, mask = synthetic_mammogram(self.size, rng, mass_probability=self.mass_probability)
        rng = self._rng(index) if self.augment or self.patch else None
        if self.patch:
            image, mask = crop_patch(image, mask, self.patch, self.lesion_patches, rng,
                                     level=BREAST_LEVEL)
        if self.augment:
            image, mask = augment_mammogram(image, mask, rng, mirror=False)
        return self._output(image, mask)


# ---------------------------------------------------------------------------------------------------------------------
# Pascal VOC 2012

class VOCSegmentation(_SegmentationSet):
    """Pascal VOC 2012 segmentation (voc.py): RGB images and class-index labels, 255 = ignore."""

    num_classes = len(VOC_CLASSES)

    def __init__(self, root: Path, split: str, size: tuple[int, int], *, in_channels: int = 3,
                 limit: int | None = None, verbose: bool = True, **common):
        if in_channels != 3:
            raise DataError(f"voc: in_channels must be 3 (Pascal VOC images are RGB), got {in_channels}")
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
        image, label = transform_voc(image, label, self.size, self._rng(index) if self.augment else None)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255  # (3, H, W)
        return self._output(pixels, np.asarray(label))


# ---------------------------------------------------------------------------------------------------------------------

def build_dataset(name: str, root: str | os.PathLike | None, split: str, image_size: int | Sequence[int],
                  **options) -> Dataset:
    """The dataset `name` ("cbis", "mias", "folder", "voc", "synthetic") for `split`, items resized to image_size."""
    try:
        size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(map(int, image_size))
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
    splits = {"cbis": SPLITS, "mias": SPLITS, "folder": SPLITS, "synthetic": SPLITS, "voc": VOC_SPLITS}
    if name not in splits:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(splits)}")
    if split not in splits[name]:
        raise DataError(f"{name}: unknown split {split!r}; choose one of {', '.join(splits[name])}")
    if name == "synthetic":
        if root is not None:
            raise DataError(f"synthetic data is generated, not read: pass no data root (got {root})")
        options.pop("fold", None), options.pop("folds", None)  # generated splits: folds mean nothing here
        return SyntheticMammograms(split, size, **options)
    if root is None:
        raise DataError(f"{name}: a data root is required (--data-root DIR)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (--data-root)")
    if name == "voc":
        if options.pop("fold", None) is not None:
            raise DataError("voc: no cross-validation folds; Pascal VOC has its own train and val lists")
        options.pop("folds", None)
        return VOCSegmentation(root, split, size, **options)
    return {"cbis": _build_cbis, "mias": _build_mias, "folder": _build_folder}[name](root, split, size, **options)
