"""Pascal VOC 2012 as users unpack it (thesis §5, Table 4): the split lists (train, val, and SBD's
trainaug when its labels are there as PNG), the palette label PNGs, and the paired transform that
brings an image and its label to the network's input size. data.VOCSegmentation serves them.

    ids, images, labels = voc_files(Path("/data/VOC"), "val")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .mammograms import DataError, fitted_size

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
VOC_SPLITS = ("train", "val", "trainaug")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found; is the VOC2012 tree complete?")
    return [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]


def voc_files(root: Path, split: str,
              limit: int | None = None) -> tuple[list[str], list[Path], list[Path]]:
    """(ids, JPEG images, label PNGs) of a split's first `limit`; DataError names what's missing."""
    folders = (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root)
    voc = next((folder for folder in folders if (folder / "JPEGImages").is_dir()), None)  # VOC2012
    if voc is None:
        raise DataError(f"{root}: no VOCdevkit/VOC2012/JPEGImages inside; pass the folder that "
                        "VOCtrainval_11-May-2012.tar was unpacked into")
    lists = voc / "ImageSets" / "Segmentation"
    if split == "trainaug":
        if (lists / "trainaug.txt").is_file():
            ids = _read_ids(lists / "trainaug.txt")
        elif (lists / "aug.txt").is_file():  # mmsegmentation's voc_aug.py: aug = trainaug - train
            ids = sorted(set(_read_ids(lists / "train.txt")) | set(_read_ids(lists / "aug.txt")))
        else:
            raise DataError(f"voc trainaug: {lists}/trainaug.txt (or aug.txt) not found; it needs "
                            f"SBD's labels as PNG in {voc}/SegmentationClassAug and the id list, "
                            "e.g. from mmsegmentation's tools/convert_datasets/voc_aug.py")
        leaked = set(ids) & set(_read_ids(lists / "val.txt"))
        if leaked:  # SBD's own train/val split is not VOC's: a careless list trains on VOC val
            raise DataError(f"voc trainaug: {len(leaked)} ids of val.txt (e.g. {min(leaked)}) are "
                            "in the trainaug list; rebuild it as (VOC train + SBD train + SBD val) "
                            "- VOC val")
    else:
        ids = _read_ids(lists / f"{split}.txt")
    ids = ids if limit is None else ids[:limit]
    images = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
    own, sbd = voc / "SegmentationClass", voc / "SegmentationClassAug"  # VOC's own label wins
    labels = [own / f"{i}.png" if (own / f"{i}.png").is_file() else sbd / f"{i}.png"
              for i in ids]
    missing = [str(p) for pair in zip(images, labels) for p in pair if not p.is_file()]
    if missing:
        raise DataError(f"voc {split}: {len(missing)} files missing, e.g. {missing[0]}; re-extract "
                        "the archive")
    return ids, images, labels


def read_voc_label(path: Path) -> np.ndarray:
    """A palette PNG as (H, W) uint8 class indices, 255 = ignore; DataError for other values."""
    try:
        with Image.open(path) as label:
            if label.mode not in ("P", "L"):
                raise DataError(f"{path}: label mode {label.mode}; expected a palette PNG of "
                                "class indices")
            values = np.asarray(label)
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # a damaged file
        raise DataError(f"{path}: cannot read the label ({error}); re-extract the archive") \
            from error
    bad = np.setdiff1d(np.unique(values), [*range(len(VOC_CLASSES)), 255])
    if bad.size:
        raise DataError(f"{path}: label values {bad.tolist()} are not classes 0-20 or 255 (ignore)")
    return values


def transform_voc(image: Image.Image, label: Image.Image, size: tuple[int, int],
                  rng: np.random.Generator | None) -> tuple[Image.Image, Image.Image]:
    """Image and label at exactly `size`: with rng, a 0.5-2x scale, flip and crop (torchvision's
    references); without, a letterbox (top-left, prediction crops it back). Label padding: 255."""
    height, width = size
    zoom = rng.uniform(0.5, 2.0) if rng is not None else 1.0
    new_height, new_width = fitted_size((image.height, image.width), size, zoom)
    new_size = (new_width, new_height)  # PIL sizes are (W, H)
    image, label = image.resize(new_size, Image.BILINEAR), label.resize(new_size, Image.NEAREST)
    left = top = 0
    if rng is not None:
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            label = label.transpose(Image.FLIP_LEFT_RIGHT)
        left = int(rng.integers(0, max(0, new_size[0] - width) + 1))
        top = int(rng.integers(0, max(0, new_size[1] - height) + 1))
    box = (left, top, min(left + width, new_size[0]), min(top + height, new_size[1]))  # pads 0
    # padding: black in the image, 255 (ignored) in the label
    canvas, labels = Image.new("RGB", (width, height)), Image.new("L", (width, height), 255)
    canvas.paste(image.crop(box), (0, 0))
    labels.paste(label.crop(box), (0, 0))
    return canvas, labels
