"""mini-MIAS as distributed (§4.1's masses task on a second public set; no thesis number):
Info.txt, the mdbNNN.pgm (or .png) images, and the masses' pixel outlines where masks/ holds them,
else Info.txt's enclosing circles, which are loose (docs/real-mammograms.md).

    images, skipped, strata = read_mias(Path("/data/mini-mias"))  # [MiasImage("mdb001", ...), ...]
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from .folders import read_mask
from .mammograms import DataError, read_image_file

MASSES = ("CIRC", "SPIC", "MISC")


class MiasImage(NamedTuple):
    ref: str  # mdbNNN
    path: Path  # the image file
    patient: int  # ceil(NNN / 2): both breasts of one woman
    # Info.txt's (x, y from the bottom, radius) per mass; () if normal
    circles: tuple[tuple[int, int, int], ...]
    mask: Path | None  # masks/mdbNNN.png when it exists (and the image has a mass)

    @property
    def normal(self) -> bool:
        return not self.circles and self.mask is None


def patient_of(ref: str) -> int:
    return (int(ref[3:]) + 1) // 2  # the two breasts of a woman are numbered consecutively


def read_gray(path: Path) -> np.ndarray:
    """An 8- or 16-bit gray PGM or PNG as (H, W) float32 in [0, 1]; else DataError naming it."""
    pixels, _, _ = read_image_file(path)
    if pixels.ndim != 2:
        raise DataError(f"{path}: a colour image; mini-MIAS images are 8- or 16-bit grayscale")
    return pixels


def read_mias(root: Path
              ) -> tuple[list[MiasImage], list[tuple[str, int, str, str]], dict[int, str]]:
    """(usable images, skipped (file, line, id, reason), {patient: "mass" or "other"}) of a folder
    holding Info.txt, the images (or images/) and optionally masks/."""
    info = root / "Info.txt"
    if not info.is_file():
        raise DataError(f"{info}: not found; mias needs the mini-MIAS Info.txt and mdbNNN.pgm "
                        "images in the data root")
    rows: dict[str, list[tuple[int, list[str]]]] = {}
    skipped = []
    for number, line in enumerate(info.read_text(errors="replace").splitlines(), start=1):
        fields = line.split()
        if fields and re.fullmatch(r"mdb\d{3}", fields[0]):
            if len(fields) < 3:
                skipped.append((info.name, number, fields[0],
                                f"malformed line: no abnormality class in {line!r}"))
                continue
            rows.setdefault(fields[0], []).append((number, fields))
    # every patient Info.txt lists, so that a split is the same whichever files are present
    strata = {patient_of(ref): "other" for ref in rows}
    strata.update({patient_of(ref): "mass" for ref, entries in rows.items()
                   if any(f[2] in MASSES for _, f in entries)})
    images = []
    for ref, entries in sorted(rows.items()):
        masses = [(number, fields) for number, fields in entries if fields[2] in MASSES]
        if not masses and not all(fields[2] == "NORM" for _, fields in entries):
            continue  # calcifications, asymmetries, distortions: another task
        path = next((p for d in (root, root / "images")
                     for p in (d / f"{ref}.pgm", d / f"{ref}.png") if p.is_file()), None)
        mask = root / "masks" / f"{ref}.png" if masses else None
        mask = mask if mask is not None and mask.is_file() else None
        problem = (f"image file missing: no {ref}.pgm or {ref}.png in the root or root/images"
                   if path is None else "")
        circles, size = [], None
        if path is not None and masses:  # to check the circles: the size only, no pixels decoded
            try:
                with Image.open(path) as header:
                    size = header.size
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                problem = f"unreadable image {path.name} ({error})"
        for number, fields in masses if size is not None else []:
            if len(fields) < 7 or not all(value.isdigit() for value in fields[4:7]):
                problem = problem or (f"no coordinates: line {number} gives no centre x, y and "
                                      "radius")
                continue
            x, y, radius = (int(value) for value in fields[4:7])  # y counts from the BOTTOM
            width, height = size
            if not (0 <= x < width and 0 < y <= height):
                problem = problem or (f"circle outside the image: line {number} puts the centre at "
                                      f"x {x}, y {y} (from the bottom) in a {width}x{height} image")
            circles.append((x, y, radius))
        if path is None or (problem and mask is None):  # an outline makes the circles unnecessary
            skipped += [(info.name, number, ref, problem or "unusable")
                        for number, _ in (masses or entries)]
            continue
        images.append(MiasImage(ref, path, patient_of(ref), tuple(circles), mask))
    return images, skipped, strata


def load_mias(image: MiasImage) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image and its masks: the outline (all masses in one), else a disc per Info.txt row."""
    pixels = read_gray(image.path)
    if image.mask is not None:
        outline = read_mask(image.mask, num_classes=1)  # 0/255 or 0/1, else a DataError
        if outline.shape != pixels.shape:
            raise DataError(f"{image.mask}: {outline.shape[1]}x{outline.shape[0]}, but its image "
                            f"{image.path} is {pixels.shape[1]}x{pixels.shape[0]}; a mask must "
                            "have its image's size")
        return pixels, [outline > 0]
    rows, cols = np.ogrid[:pixels.shape[0], :pixels.shape[1]]
    height = pixels.shape[0]
    return pixels, [(rows - (height - y)) ** 2 + (cols - x) ** 2 <= r * r
                    for x, y, r in image.circles]
