"""Mammograms as files and as network input (§4.1): DICOM, the other image files users have, and preprocessing.

data.py turns what this file (and cbis.py, mias.py, folders.py for each kind of download) reads into training items
(cache, normalisation) and re-exports `read_dicom`, `augment_mammogram` and `DataError`. What lives here:
  * read_dicom      any single-frame grayscale DICOM -> float32 [H, W] in [0, 1]; DataError for everything else.
  * read_image_file DICOM, PNG, JPEG, TIFF or PGM, 8 or 16 bit, gray or RGB -> float32 in [0, 1] (+ pixel spacing).
  * preprocess_mammogram  full-resolution image + lesion masks -> the network's input size: optional breast-region
                    crop (largest bright region, widened to hold every lesion), resize of the whole image (stretched,
                    as the thesis' 256x256, or keep_aspect=True: longer side fits, padded right/bottom), intensities
                    stretched between the 0.5th and 99.5th percentiles, and a mirror so every breast faces left.
                    Each lesion's mask is area-resized and kept where at least half a pixel is covered; a lesion that
                    would vanish keeps its best-covered pixel, so small masses survive a 12-20x reduction.
  * augment_mammogram  the training augmentation of a preprocessed image and its mask (ours, not the thesis').

    image = read_dicom("scan.dcm")                                     # (H, W) float32 in [0, 1]
    pixels, mask = preprocess_mammogram(image, [], (256, 256))         # what the network sees
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError
from PIL import Image

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class DataError(Exception):
    """A data problem the user can fix; the message names the file, option or CSV row and what to do."""


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
    finite, bad = None, 0
    if pixels.dtype.kind == "f":  # float pixel data has no nominal range: use the image's own finite one
        finite = np.isfinite(pixels)
        bad = pixels.size - int(np.count_nonzero(finite))
        if bad == pixels.size:
            raise DataError(f"{path}: all {bad} pixels are NaN or infinite; there is no image to read")
        stored = (float(np.min(pixels, where=finite, initial=np.inf)),
                  float(np.max(pixels, where=finite, initial=-np.inf)))
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
    if bad:  # NaN would spread through every resize and percentile (an empty mask): show no data as the darkest
        image[~finite] = 0.0
        print(f"note: {path}: {bad} of {pixels.size} pixels are NaN or infinite; read as the image's darkest value",
              file=sys.stderr)
    return image


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read one grayscale DICOM: rescale slope/intercept applied, MONOCHROME1 inverted, (H, W) float32 in [0, 1].

    The stored range (0 .. 2**BitsStored - 1, or the signed range), after rescaling, maps onto [0, 1]; float pixel
    data (FloatPixelData) has no nominal range, so its finite minimum and maximum map there, and NaN or infinite
    pixels become the darkest value (a note on stderr counts them). Not DICOM, truncated, colour, several frames, no
    pixel data, no finite pixel or a compressed syntax without a decoder raise DataError naming the file; no other
    exception type escapes.
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


# ---------------------------------------------------------------------------------------------------------------------
# Image files of any kind

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm")


def is_dicom(path: Path) -> bool:
    """A DICOM file by its suffix, or by the "DICM" marker at byte 128 (PACS exports often have no suffix).
    Raises OSError when the file has no DICOM suffix and cannot be read."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as file:
        return file.read(132)[128:] == b"DICM"


def dicom_pixel_spacing(path: Path) -> tuple[float, float, str] | None:
    """(row mm, column mm, tag) from PixelSpacing, else ImagerPixelSpacing (at the detector, without correction for
    the magnification); None if neither is there or usable (only the mm^2 figure is lost, and the line says so)."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            rows, columns = (float(value) for value in header.get(tag) or ())
        except (TypeError, ValueError):  # absent, not two numbers
            continue
        if rows > 0 and columns > 0:
            return rows, columns, tag
    return None


def read_image_file(path: Path) -> tuple[np.ndarray, bool, tuple[float, float, str] | None]:
    """(H, W) gray or (H, W, 3) RGB float32 in [0, 1], whether it is a DICOM, and the pixel spacing one gives.

    DICOM is recognised by its suffix or the "DICM" marker at byte 128 and read by read_dicom. 8-bit files
    are divided by 255, 16-bit by 65535 (older Pillow opens 16-bit PNGs as 32-bit "I": values must fit 16 bits).
    Raises DataError naming the file for anything else."""
    try:
        dicom = is_dicom(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from error
    if dicom:
        return read_dicom(path), True, dicom_pixel_spacing(path)
    try:
        with Image.open(path) as file:
            mode = file.mode
            if mode == "F":
                raise DataError(f"{path}: floating-point pixels have no known range; save 8- or 16-bit gray or RGB")
            if not mode.startswith("I"):
                gray = mode in ("1", "L", "LA")
                eight = np.asarray(file.convert("L" if gray else "RGB"))
                return np.divide(eight, 255, dtype=np.float32), False, None  # one float32 array: 4 bytes a pixel
            pixels = np.asarray(file)  # 16-bit gray: "I;16" (older Pillow opens 16-bit PNGs as 32-bit "I")
    except OSError as error:  # PIL's UnidentifiedImageError, truncated files
        raise DataError(f"{path}: cannot read the image ({error})") from error
    except Image.DecompressionBombError as error:  # over 2 x Image.MAX_IMAGE_PIXELS, far beyond any mammogram
        raise DataError(f"{path}: {error}") from error
    if pixels.min() < 0 or pixels.max() > 65535:
        raise DataError(f"{path}: {mode} pixels outside 0..65535; save the image as 8- or 16-bit gray or RGB")
    return np.divide(pixels, 65535, dtype=np.float32), False, None


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
                         crop_breast: bool = False, keep_aspect: bool = False,
                         labels: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution image (H, W) in [0, 1] and one bool mask per lesion -> (size float32 image, size uint8 mask).

    labels: the class of each mask (default: 1 for every one, a binary lesion mask); later masks win where two
    overlap, so a class-index mask passed as one mask per class comes back as class indices."""
    if crop_breast:
        top, bottom, left, right = _breast_box(image, masks)
        image, masks = image[top:bottom, left:right], [mask[top:bottom, left:right] for mask in masks]
    inner = fitted_size(image.shape, size) if keep_aspect else size
    pixels = torch.from_numpy(np.ascontiguousarray(image))[None, None]  # (1, 1, H, W)
    resized = F.interpolate(pixels, size=inner, mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    resized = stretch_contrast(resized)
    mask = np.zeros(inner, dtype=np.uint8)
    for lesion, label in zip(masks, labels or [1] * len(masks)):
        mask[_resize_mask(lesion, inner)] = label
    if orient and faces_right(resized):  # mirror it to the left
        resized, mask = resized[:, ::-1], mask[:, ::-1]
    out_image, out_mask = np.zeros(size, np.float32), np.zeros(size, np.uint8)
    out_image[:inner[0], :inner[1]], out_mask[:inner[0], :inner[1]] = resized, mask  # pad right/bottom
    return out_image, out_mask


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
