"""Datasets of the thesis (§4.1, §5, Table 1): CBIS-DDSM, mini-MIAS, Pascal VOC 2012 and synthetic mammograms.

    train_set = build_dataset("cbis", "/data/cbis", "train", 256)   # items: (image (3, 256, 256), mask (256, 256))

`build_dataset(name, root, split, image_size, **options)` is the one entry point. Every dataset has `.ids[i]` (what item
i is), `.num_classes` (model output channels: 1 for the binary mammography sets, masks {0, 1}; 21 for VOC, masks
0..20 with 255 = ignore) and yields (image float32 (C, H, W) normalised with `mean`/`std`, mask int64 (H, W)).

Options every dataset takes: `in_channels` (1 = native grayscale; 3 = grayscale replicated to RGB, the default, for
ImageNet encoders; VOC needs 3), `mean`/`std` (length in_channels; ImageNet statistics by default), `augment`
(default: on for training splits only), `seed`, `limit` (the first N items of the split) and `verbose`.

  cbis       data root = the NBIA download (either layout, see cbis.py) with the four case-description CSVs (or
             csv_dir=...). Masses by default, abnormality="calcification" for the other half. "train"/"val" split
             the official training CSV by patient (val_fraction=0.2, split_seed=0), "test" is the official test CSV.
             The thesis' 690 + 168 = 858 images match no subset of the CSVs we could count (the mass training CSV
             alone has 1231 images of 691 patients), so we keep all of them and only its ~80/20 ratio.
  mias       data root = Info.txt with mdbNNN.pgm (or .png) files, in the root or root/images. Masses (CIRC, SPIC,
             MISC) by default; include_normals=True adds the NORM images with empty masks. Masks are Info.txt's
             filled circles, whose y axis starts at the BOTTOM (row = height - y). Split by patient (a left/right pair
             mdb(2k-1), mdb(2k)) with a fixed seed, 60/20/20, masses and normals shuffled separately.
  voc        data root holding VOCdevkit/VOC2012 (or VOC2012 itself): "train", "val", and "trainaug" (10,582 ids) when
             SBD's labels, converted to PNG, sit in VOC2012/SegmentationClassAug with ImageSets/Segmentation/
             trainaug.txt (or aug.txt); VOC's own label wins where both exist.
  synthetic  root None; num_images (400/64/64), generated on the fly from (seed, split, index).

Mammograms are preprocessed once (mammograms.preprocess_mammogram: optional breast crop, breasts mirrored to face left,
the whole image resized to image_size, an int = square or (H, W), stretched like the thesis' 256x256 unless
keep_aspect=True) and cached in cache_dir (default $XDG_CACHE_HOME or ~/.cache, then unet-fusion/<dataset>-<hash of
the root>/, since data roots are often read-only): one .npz per image, named by a hash of its source files' paths,
sizes and mtimes and of the preprocessing options, so a change to either builds a new entry. Entries are written to
a temporary file and renamed, so a killed run or concurrent DataLoader workers never leave a broken one. Delete the
folder to reclaim space. Skipped rows are summed up on stdout and listed in <cache_dir>/skipped_<split>.csv
(skipped_<abnormality>_<split>.csv for CBIS-DDSM).

Augmentation draws from torch's RNG (DataLoader seeds each worker from it), so torch.manual_seed makes it reproducible.
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
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

from cbis import CbisTree, cbis_images, check_mammogram, load_mammogram, subject_of
from mammograms import (SPLITS, DataError, error_line, fitted_size, load_mias, preprocess_mammogram, read_dicom,
                        read_mias, stretch_contrast)

__all__ = ["DataError", "error_line", "read_dicom", "build_dataset", "synthetic_mammogram", "preprocess_mammogram",
           "augment_mammogram", "fitted_size", "transform_voc", "MammogramDataset", "SyntheticMammograms",
           "VOCSegmentation"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CACHE_VERSION = 1  # bump when preprocess_mammogram changes, so old cache entries are not reused


def default_cache_dir(name: str, root: str | os.PathLike) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "unet-fusion" / f"{name}-{hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]}"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and os.replace, so readers see the old or the new file only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation

def augment_mammogram(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
                      mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """Paired vertical flip (horizontal too if breasts are not oriented), rotation within 10 degrees, scale and shift
    within 10% and 5%, and a gamma/gain/offset jitter of the intensities."""
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if mirror and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    height, width = image.shape
    angle, scale = np.deg2rad(rng.uniform(-10, 10)), rng.uniform(0.9, 1.1)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    shift_x, shift_y = rng.uniform(-0.05, 0.05, 2) * 2  # in affine_grid's [-1, 1] coordinates
    # A rotation in pixels, written in the normalised coordinates of a possibly non-square grid.
    theta = torch.tensor([[[cos, -sin * height / width, shift_x], [sin * width / height, cos, shift_y]]],
                         dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
    pixels = F.grid_sample(torch.from_numpy(image.copy())[None, None], grid, align_corners=False)[0, 0]
    labels = F.grid_sample(torch.from_numpy(mask.astype(np.float32))[None, None], grid, mode="nearest",
                           align_corners=False)[0, 0]
    gamma, gain, offset = np.exp(rng.uniform(-0.22, 0.22)), rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
    pixels = (pixels.clamp(0, 1) ** gamma * gain + offset).clamp(0, 1)
    return pixels.numpy(), labels.numpy().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Datasets

class _SegmentationSet(Dataset):
    """Options shared by every dataset: channels, normalisation, augmentation switch and seed."""

    num_classes = 1

    def __init__(self, *, split: str, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, augment: bool | None = None, seed: int = 0):
        if in_channels not in (1, 3):
            raise DataError(f"in_channels must be 1 or 3, got {in_channels}")
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.449,), (0.226,))
        mean, std = tuple(default_mean if mean is None else mean), tuple(default_std if std is None else std)
        if len(mean) != in_channels or len(std) != in_channels:
            raise DataError(f"mean {mean} and std {std} need {in_channels} values each (in_channels={in_channels})")
        self.in_channels, self.seed = in_channels, seed
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        self.augment = split.startswith("train") if augment is None else augment
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
    """Preprocessed mammograms with binary lesion masks, cached on disk: the body of "cbis" and "mias".

    sources[i] is passed to load(), which returns the full-resolution image and one bool mask per lesion.
    """

    def __init__(self, ids: list[str], sources: list, cache_files: list[Path], load: Callable, *,
                 size: tuple[int, int], orient: bool, crop_breast: bool, keep_aspect: bool, **common):
        super().__init__(**common)
        self.ids, self.sources, self.cache_files, self.load = ids, sources, cache_files, load
        self.preprocess = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)

    def preprocessed(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W) float32 in [0, 1] and mask (H, W) uint8 {0, 1}, from the cache or built and cached."""
        path = self.cache_files[index]
        try:
            with np.load(path) as cached:
                image, mask = cached["image"], cached["mask"]
            if image.shape == mask.shape == self.preprocess["size"]:
                return image.astype(np.float32) / 65535, mask
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            pass  # not built yet, or damaged on disk (writes are atomic, so not by a killed run): build it below
        image, mask = preprocess_mammogram(*self.load(*self.sources[index]), **self.preprocess)
        quantised = np.round(image * 65535).astype(np.uint16)  # 16 bits keep the film's dynamic range
        buffer = io.BytesIO()
        np.savez(buffer, image=quantised, mask=mask)
        _atomic_write(path, buffer.getvalue())
        return quantised.astype(np.float32) / 65535, mask  # exactly what a cache hit returns

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.preprocessed(index)
        if self.augment:
            image, mask = augment_mammogram(image, mask, self._rng(index), mirror=not self.preprocess["orient"])
        return self._output(image, mask)


def _cache_file(cache_dir: Path, item: str, sources: list[Path], options: dict) -> Path:
    """Cache entry name: item id + hash of the sources (path, size, mtime) and every preprocessing option."""
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in sources]
    key = json.dumps([CACHE_VERSION, stats, options], sort_keys=True, default=str)
    return cache_dir / f"{item}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _report(name: str, split: str, images: int, lesions: int, merged: int, skipped: list[tuple[str, str, str, str]],
            path: Path, verbose: bool) -> None:
    """Write every skipped row to `path` (a CSV) and print a one-line summary."""
    text = io.StringIO()
    csv.writer(text).writerows([("file", "row", "id", "reason"), *skipped])
    _atomic_write(path, text.getvalue().encode())
    if verbose:
        kinds = ", ".join(f"{count} {kind}" for kind, count in Counter(r[3].split(":")[0] for r in skipped).items())
        print(f"{name} {split}: {images} images, {lesions} lesion masks ({merged} merged into images with several "
              f"lesions); skipped rows: {len(skipped)}{f' ({kinds})' if kinds else ''}, listed in {path}")


def _cbis_sample(tree: CbisTree, rows: list[dict]) -> tuple[np.ndarray, list[np.ndarray]]:
    full, candidates, problems = check_mammogram(tree, rows)
    if problems:  # the files changed since the dataset was built
        raise DataError(f"{rows[0]['image file path']}: {problems[0][1]}; rebuild the dataset")
    return load_mammogram(full, candidates)


def _build_cbis(root: Path, split: str, size: tuple[int, int], *, abnormality: str = "mass",
                csv_dir: str | None = None, val_fraction: float = 0.2, split_seed: int = 0,
                cache_dir: str | None = None, orient: bool = True, crop_breast: bool = False,
                keep_aspect: bool = False, limit: int | None = None, verbose: bool = True, **common) -> Dataset:
    images = cbis_images(csv_dir or root, split, abnormality=abnormality, val_fraction=val_fraction,
                         split_seed=split_seed)
    tree, cache_dir = CbisTree(root), Path(cache_dir or default_cache_dir("cbis", root))
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
    _report("cbis", split, len(ids), lesions, lesions - len(ids), skipped,
            cache_dir / f"skipped_{abnormality}_{split}.csv", verbose)
    return MammogramDataset(ids, sources, cache_files, _cbis_sample, split=split, **options, **common)


def _build_mias(root: Path, split: str, size: tuple[int, int], *, include_normals: bool = False,
                split_seed: int = 0, cache_dir: str | None = None, orient: bool = True, crop_breast: bool = False,
                keep_aspect: bool = False, limit: int | None = None, verbose: bool = True, **common) -> Dataset:
    records, skipped = read_mias(root, split, include_normals=include_normals, split_seed=split_seed)
    records = records[:limit]
    cache_dir = Path(cache_dir or default_cache_dir("mias", root))
    options = dict(size=size, orient=orient, crop_breast=crop_breast, keep_aspect=keep_aspect)
    # The circles come from Info.txt, not from the image file, so they are part of the cache key.
    cache_files = [_cache_file(cache_dir, ref, [path], dict(options, circles=circles))
                   for ref, path, circles in records]
    lesions = sum(len(circles) for *_, circles in records)
    merged = sum(max(0, len(circles) - 1) for *_, circles in records)
    _report("mias", split, len(records), lesions, merged, skipped, cache_dir / f"skipped_{split}.csv", verbose)
    return MammogramDataset([ref for ref, *_ in records], [(path, circles) for _, path, circles in records],
                            cache_files, load_mias, split=split, **options, **common)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic mammograms

SYNTHETIC_SIZES = {"train": 400, "val": 64, "test": 64}


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean noise with blobs about size / cells pixels wide: a coarse random grid, upsampled bicubically."""
    grid = Image.fromarray(rng.standard_normal((cells, cells), dtype=np.float32))
    return np.asarray(grid.resize(size[::-1], Image.BICUBIC))


def _add_mass(image: np.ndarray, mask: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> None:
    """Draw one round, lobulated or spiculated mass of random size, contrast and edge sharpness into image and mask."""
    height, width = image.shape
    radius = np.exp(rng.uniform(np.log(0.025), np.log(0.11))) * min(height, width)  # pixels
    for _ in range(100):  # a centre well inside the breast, away from the skin line
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        if depth[cy, cx] > 0.8:
            break
    else:
        return
    kind = rng.choice(["round", "lobulated", "spiculated"])
    reach = int((3.0 if kind == "spiculated" else 1.6) * radius) + 2
    top, left = max(0, cy - reach), max(0, cx - reach)
    dy = np.arange(top, min(height, cy + reach), dtype=np.float32)[:, None] - cy  # (h, 1)
    dx = np.arange(left, min(width, cx + reach), dtype=np.float32)[None, :] - cx  # (1, w)
    turn, elongation = rng.uniform(0, np.pi), rng.uniform(0.65, 1.0)
    u, v = dx * np.cos(turn) + dy * np.sin(turn), (dy * np.cos(turn) - dx * np.sin(turn)) / elongation
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    lobes, amplitude = ((2, 3), 0.04) if kind == "round" else ((rng.integers(3, 6), rng.integers(5, 8)), 0.2)
    outline = radius * (1 + sum(rng.uniform(0, amplitude) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
                                for k in lobes))
    distance = (rho - outline) / radius  # < 0 inside the mass
    contrast, softness = rng.uniform(0.06, 0.25), rng.uniform(0.04, 0.25)
    # A soft-edged dome: the border sharpness varies from well-defined to ill-defined masses.
    brightness = contrast / (1 + np.exp(np.clip(distance / softness, -30, 30))) * (1.15 - 0.3 * rho / (rho.max() + 1))
    if kind == "spiculated":  # thin bright lines radiating past the border; they are not part of the outline
        lines = Image.new("L", (dx.shape[1], dy.shape[0]))
        draw = ImageDraw.Draw(lines)
        for angle in rng.uniform(0, 2 * np.pi, rng.integers(6, 15)):
            length = radius * rng.uniform(1.5, 2.8)
            for fade, (start, stop) in zip((255, 170, 85), ((0.5, 0.75), (0.75, 0.9), (0.9, 1.0))):
                ends = [(cx - left + f * length * np.cos(angle), cy - top + f * length * np.sin(angle))
                        for f in (start, stop)]
                draw.line(ends, fill=fade, width=1)
        spicules = np.asarray(lines.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
        brightness = brightness + 0.8 * contrast / 255 * spicules
    window = (slice(top, top + dy.shape[0]), slice(left, left + dx.shape[1]))
    breast = depth[window] > 0
    image[window] += brightness * breast
    mask[window] |= (distance < 0) & breast


def synthetic_mammogram(size: tuple[int, int], rng: np.random.Generator, *,
                        mass_probability: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic mammogram: breast outline on the left, textured tissue, noise, 0-2 masses -> (image, mask).

    image (H, W) float32 in [0, 1]; mask (H, W) uint8, 1 inside a mass.
    """
    height, width = size
    y = np.linspace(-1, 1, height, dtype=np.float32)[:, None]  # (H, 1)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]  # (1, W); the chest wall is at x = 0
    cy, ry, rx = rng.uniform(-0.15, 0.15), rng.uniform(0.7, 0.95), rng.uniform(0.55, 0.9)
    radius = np.sqrt(((y - cy) / ry) ** 2 + (x / rx) ** 2)  # 1 on an elliptic skin line
    radius += 0.03 * _smooth_noise(rng, size, 3)  # an irregular outline
    depth = np.clip((1 - radius) / 0.3, 0, 1)  # 0 outside, rising to 1 behind the skin line
    texture = sum(w * _smooth_noise(rng, size, cells) for cells, w in ((4, 0.5), (9, 0.3), (20, 0.2)))
    image = 0.05 + np.sqrt(depth) * (rng.uniform(0.3, 0.45) + rng.uniform(0.08, 0.16) * texture)
    if rng.random() < 0.5:  # MLO-like view: a brighter pectoral muscle triangle at the top of the chest wall
        image += 0.15 * ((x / rng.uniform(0.2, 0.4) + (y + 1) / rng.uniform(0.5, 1.0)) < 1) * (depth > 0)
    mask = np.zeros(size, dtype=bool)
    if rng.random() < mass_probability:
        for _ in range(2 if rng.random() < 0.15 else 1):
            _add_mass(image, mask, depth, rng)
    image += rng.uniform(0.01, 0.03) * rng.standard_normal(size, dtype=np.float32)
    return stretch_contrast(image), mask.astype(np.uint8)  # as preprocess_mammogram does to real ones


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
        if self.augment:
            image, mask = augment_mammogram(image, mask, self._rng(index), mirror=False)
        return self._output(image, mask)


# ---------------------------------------------------------------------------------------------------------------------
# Pascal VOC 2012

class VOCSegmentation(_SegmentationSet):
    """Pascal VOC 2012 segmentation: RGB images and palette PNG labels (class index per pixel, 255 = ignore)."""

    num_classes = 21

    def __init__(self, root: Path, split: str, size: tuple[int, int], *, in_channels: int = 3,
                 limit: int | None = None, verbose: bool = True, **common):
        if in_channels != 3:
            raise DataError(f"voc: in_channels must be 3 (Pascal VOC images are RGB), got {in_channels}")
        super().__init__(split=split, in_channels=3, **common)
        folders = (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root)
        voc = next((folder for folder in folders if (folder / "JPEGImages").is_dir()), None)
        if voc is None:
            raise DataError(f"{root}: no VOCdevkit/VOC2012/JPEGImages inside; pass the folder that "
                            "VOCtrainval_11-May-2012.tar was unpacked into")
        lists = voc / "ImageSets" / "Segmentation"
        if split == "trainaug":
            if (lists / "trainaug.txt").is_file():
                ids = self._read_ids(lists / "trainaug.txt")
            elif (lists / "aug.txt").is_file():  # mmsegmentation's voc_aug.py writes aug.txt = trainaug - train
                ids = sorted(set(self._read_ids(lists / "train.txt")) | set(self._read_ids(lists / "aug.txt")))
            else:
                raise DataError(f"voc trainaug: {lists}/trainaug.txt (or aug.txt) not found; it needs SBD's labels as "
                                f"PNG in {voc}/SegmentationClassAug and the id list, e.g. from mmsegmentation's "
                                "tools/convert_datasets/voc_aug.py")
            leaked = set(ids) & set(self._read_ids(lists / "val.txt"))
            if leaked:  # SBD's own train/val split is not VOC's: a careless list trains on VOC val images
                raise DataError(f"voc trainaug: {len(leaked)} ids of val.txt (e.g. {min(leaked)}) are in the trainaug "
                                "list; rebuild it as (VOC train + SBD train + SBD val) - VOC val")
        else:
            ids = self._read_ids(lists / f"{split}.txt")
        ids = ids if limit is None else ids[:limit]
        self.images = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
        own, sbd = voc / "SegmentationClass", voc / "SegmentationClassAug"  # VOC's own label wins over SBD's
        self.labels = [own / f"{i}.png" if (own / f"{i}.png").is_file() else sbd / f"{i}.png" for i in ids]
        missing = [str(p) for pair in zip(self.images, self.labels) for p in pair if not p.is_file()]
        if missing:
            raise DataError(f"voc {split}: {len(missing)} files missing, e.g. {missing[0]}; re-extract the archive")
        self.ids, self.size = ids, size
        if verbose:
            print(f"voc {split}: {len(ids)} images from {voc}")

    @staticmethod
    def _read_ids(path: Path) -> list[str]:
        if not path.is_file():
            raise DataError(f"{path}: split list not found; is the VOC2012 tree complete?")
        return [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]

    @staticmethod
    def _read_label(path: Path) -> Image.Image:
        with Image.open(path) as label:
            if label.mode not in ("P", "L"):
                raise DataError(f"{path}: label mode {label.mode}; expected a palette PNG of class indices")
            values = np.asarray(label)
        bad = np.setdiff1d(np.unique(values), [*range(21), 255])
        if bad.size:
            raise DataError(f"{path}: label values {bad.tolist()} are not classes 0-20 or 255 (ignore)")
        return Image.fromarray(values)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            with Image.open(self.images[index]) as file:
                image = file.convert("RGB")
        except OSError as error:
            raise DataError(f"{self.images[index]}: cannot read the image ({error})") from error
        label = self._read_label(self.labels[index])
        image, label = transform_voc(image, label, self.size, self._rng(index) if self.augment else None)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255  # (3, H, W)
        return self._output(pixels, np.asarray(label))


def transform_voc(image: Image.Image, label: Image.Image, size: tuple[int, int],
                  rng: np.random.Generator | None) -> tuple[Image.Image, Image.Image]:
    """Paired VOC transform to exactly `size`. Training (rng given): random scale 0.5-2x of the fitted size, flip and
    random crop, as torchvision's references; evaluation (rng None): the longer side fits, no distortion. Padding is
    black in the image and 255 (ignored) in the label."""
    height, width = size
    zoom = rng.uniform(0.5, 2.0) if rng is not None else 1.0
    new_height, new_width = fitted_size((image.height, image.width), size, zoom)
    new_size = (new_width, new_height)  # PIL sizes are (W, H)
    image, label = image.resize(new_size, Image.BILINEAR), label.resize(new_size, Image.NEAREST)
    left = top = 0
    if rng is not None:
        if rng.random() < 0.5:
            image, label = image.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
        left = int(rng.integers(0, max(0, new_size[0] - width) + 1))
        top = int(rng.integers(0, max(0, new_size[1] - height) + 1))
    box = (left, top, min(left + width, new_size[0]), min(top + height, new_size[1]))  # PIL pads crops with 0
    canvas, labels = Image.new("RGB", (width, height)), Image.new("L", (width, height), 255)
    canvas.paste(image.crop(box), (0, 0))
    labels.paste(label.crop(box), (0, 0))
    return canvas, labels


# ---------------------------------------------------------------------------------------------------------------------

def build_dataset(name: str, root: str | os.PathLike | None, split: str, image_size: int | Sequence[int],
                  **options) -> Dataset:
    """The dataset `name` ("cbis", "mias", "voc", "synthetic") for `split`, items resized to image_size."""
    try:
        size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(map(int, image_size))
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"image_size must be an int or an (H, W) pair, got {image_size!r}")
    splits = {"cbis": SPLITS, "mias": SPLITS, "synthetic": SPLITS, "voc": ("train", "val", "trainaug")}
    if name not in splits:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(splits)}")
    if split not in splits[name]:
        raise DataError(f"{name}: unknown split {split!r}; choose one of {', '.join(splits[name])}")
    if name == "synthetic":
        if root is not None:
            raise DataError(f"synthetic data is generated, not read: pass no data root (got {root})")
        return SyntheticMammograms(split, size, **options)
    if root is None:
        raise DataError(f"{name}: a data root is required (--data-root DIR)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (--data-root)")
    if name == "voc":
        return VOCSegmentation(root, split, size, **options)
    return (_build_cbis if name == "cbis" else _build_mias)(root, split, size, **options)
