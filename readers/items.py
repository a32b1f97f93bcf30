"""How a dataset serves its items (thesis §4.1's pipeline): channels, normalisation, augmentation,
patches, and the on-disk cache of preprocessed mammograms (docs/data.md) with its skipped lists.

    prepare_datasets([train_set, val_set], workers=4)  # every cache entry built before step 0
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
from torch.utils.data import DataLoader, Dataset

from model import default_normalisation

from .atomic import atomic_write
from .mammograms import DataError, augment_mammogram, preprocess_mammogram
from .patches import BREAST_LEVEL, crop_patch

# bump when reading a file or preprocess_mammogram changes: old cache entries are not reused, and
# a run started before is not resumed on other pixels (engine/setup.check_same_images)
CACHE_VERSION = 3
CACHE_ENV = "UNET_FUSION_CACHE"  # the cache's base folder, when ~/.cache cannot be written


def root_hash(root: str | os.PathLike) -> str:
    """What names a dataset root in the shared cache: a hash of its absolute path."""
    return hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]


def cache_folder(name: str, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 *, flag: str | None = "--cache-dir") -> Path:
    """cache_dir, else <$UNET_FUSION_CACHE, $XDG_CACHE_HOME/unet-fusion or ~/.cache/unet-fusion>/
    <name>-<hash of the root>; checked here, so an unwritable one ends in one line naming it."""
    if cache_dir is None:
        base = os.environ.get(CACHE_ENV) or (
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unet-fusion")
        cache_dir = Path(base) / f"{name}-{root_hash(root)}"
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=cache_dir).close()  # the one sure test: create, delete a file
    except OSError as error:
        where = f"{flag} DIR or ${CACHE_ENV}" if flag else f"${CACHE_ENV}"  # the command's own flag
        raise DataError(f"cache folder {cache_dir} cannot be written ({error.strerror or error}); "
                        f"give a writable one with {where}") from None
    return cache_dir


class SegmentationSet(Dataset):
    """Options shared by every dataset: channels, normalisation, augmentation switch and seed."""

    num_classes = 1

    def __init__(self, *, split: str, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, augment: bool | None = None, seed: int = 0,
                 patch: tuple[int, int] | None = None, lesion_patches: float = 1 / 3):
        if in_channels not in (1, 3):
            raise DataError(f"in_channels must be 1 or 3, got {in_channels}")
        # ImageNet's statistics, as torchvision
        default_mean, default_std = default_normalisation("resnet34", in_channels)
        mean = tuple(default_mean if mean is None else mean)
        std = tuple(default_std if std is None else std)
        if len(mean) != in_channels or len(std) != in_channels:
            raise DataError(f"mean {mean} and std {std} need {in_channels} values each "
                            f"(in_channels={in_channels})")
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
        mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
        return (pixels - self.mean) / self.std, mask


class MammogramDataset(SegmentationSet):
    """Preprocessed mammograms with their masks, cached on disk: the body of cbis, mias and folder.
    load(*sources[i]) gives the image, one bool mask per lesion and their labels (None: all 1)."""

    def __init__(self, ids: list[str], sources: list, cache_files: list[Path], load: Callable, *,
                 size: tuple[int, int], orient: bool, crop_breast: bool, keep_aspect: bool,
                 num_classes: int = 1, **common):
        super().__init__(**common)
        self.ids, self.sources, self.cache_files, self.load = ids, sources, cache_files, load
        self.num_classes = num_classes
        self.preprocess = dict(size=size, orient=orient, crop_breast=crop_breast,
                               keep_aspect=keep_aspect)

    def preprocessed(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W) float32 in [0, 1], mask (H, W) uint8 labels; built and cached if missing."""
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
            pass  # not built yet, or damaged on disk (writes are atomic: not by a killed run)
        pixels, masks, labels = self.load(*self.sources[index])
        image, mask = preprocess_mammogram(pixels, masks, labels=labels, **self.preprocess)
        quantised = np.round(image * 65535).astype(np.uint16)  # 16 bits keep the film's range
        buffer = io.BytesIO()
        np.savez(buffer, image=quantised, mask=mask)
        atomic_write(path, buffer.getvalue())
        return quantised, mask  # exactly what a cache hit returns

    def prepare(self, workers: int = 0, *, share: tuple[int, int] = (0, 1)) -> dict[int, str]:
        """Build share (k, n) of the missing entries -> {index: why it cannot be used}."""
        missing = [index for index, path in enumerate(self.cache_files)
                   if not path.is_file()][share[0]::share[1]]
        if not missing:
            return {}
        loader = DataLoader(_Preparation(self, missing), batch_size=None,
                            num_workers=min(workers, len(missing)))
        return dict(result for result in loader if result[1])

    def leave_out(self, failed: dict[int, str], *, report: bool = True) -> None:
        """Drop the items `failed` names; with `report`, name them in one line and a CSV."""
        if not failed:
            return
        unreadable = [(str(self.ids[index]), 0, self.ids[index], reason)
                      for index, reason in sorted(failed.items())]
        # one list per set of ids: folds and abnormalities share a cache
        digest = hashlib.sha1("\n".join(self.ids).encode()).hexdigest()[:8]
        listing = self.cache_files[min(failed)].parent / f"unreadable_{self.split}-{digest}.csv"
        keep = [index for index in range(len(self)) if index not in failed]
        self.ids, self.sources, self.cache_files = ([items[index] for index in keep]
                                                    for items in (self.ids, self.sources,
                                                                  self.cache_files))
        if report:
            _list_rows(listing, unreadable)
            print(f"{self.split}: {len(failed)} image(s) left out, since they cannot be used "
                  f"({unreadable[0][3]}{', ...' if len(failed) > 1 else ''}); listed in {listing}")

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
    """prepare()'s work list: item k builds the entry of item indices[k] -> (index, "" or why)."""

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
    """Build the missing cache entries of the mammogram sets and leave out the unusable images."""
    for dataset in (d for d in datasets if isinstance(d, MammogramDataset)):
        if world > 1:  # under torchrun each process first builds its share
            dataset.prepare(workers, share=(rank, world))
            torch.distributed.barrier()
        # rank 0 alone retries what is still missing and decides; every process leaves out the
        # images it names, so all keep the same set
        failed = [dataset.prepare(workers) if rank == 0 else None]
        if world > 1:
            torch.distributed.broadcast_object_list(failed, src=0)
        dataset.leave_out(failed[0], report=rank == 0)


def cache_file(cache_dir: Path, item: str, sources: list[Path], options: dict) -> Path:
    """An entry's name: the item id + a hash of the sources (path, size, mtime) and the options."""
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)
             for path in sources]
    key = json.dumps([CACHE_VERSION, stats, options], sort_keys=True, default=str)
    return cache_dir / f"{item}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _list_rows(path: Path, rows: list[tuple]) -> None:
    """Write (file, row, id, reason) rows to the CSV `path`."""
    text = io.StringIO()
    csv.writer(text).writerows([("file", "row", "id", "reason"), *rows])
    atomic_write(path, text.getvalue().encode())


def skipped_listing(cache_dir: Path, name: str, root: Path, split: str, fold: int | None = None,
                    folds: int = 5) -> Path:
    """The CSV of a split's skipped rows, named by the dataset and its root (a shared cache), and
    by its fold: the folds of a cross-validation, run at once, each write their own."""
    part = split if fold is None else f"{split}-fold{fold}of{folds}"
    return cache_dir / f"skipped_{name}-{root_hash(root)[:8]}_{part}.csv"


def report_skipped(name: str, split: str, counts: str, skipped: list[tuple], path: Path,
                   verbose: bool) -> None:
    """Write every skipped row to `path` (a CSV) and print a one-line summary."""
    _list_rows(path, skipped)
    if verbose:
        kinds = ", ".join(f"{count} {kind}"
                          for kind, count in Counter(r[3].split(":")[0] for r in skipped).items())
        first = ", ".join(row[2] for row in skipped[:3]) + ", ..." * (len(skipped) > 3)
        listed = f" ({kinds}: {first}), listed in {path}" if skipped else ""
        print(f"{name} {split}: {counts}; skipped rows: {len(skipped)}{listed}")
