"""Mammograms as files and as network input (thesis §4.1): DICOM and the other image files users
have, read as float32 in [0, 1]; the preprocessing to the network's input size (docs/reproduce.md)
and the training augmentation. DataError is every data problem a user can fix.

    pixels, mask = preprocess_mammogram(read_dicom("scan.dcm"), [], (256, 256))  # the net's input
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_voi
from PIL import Image

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class DataError(Exception):
    """A data problem the user can fix; the message names the file, option or CSV row, and a fix."""


@contextmanager
def open_csv(path: Path) -> Iterator:
    """A CSV file as UTF-8 text (a spreadsheet's BOM dropped); DataError naming it if it is not."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            yield file
    except UnicodeDecodeError as error:  # Excel's plain "CSV" is the system's code page
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}); save it as \"CSV "
                        "UTF-8\"") from None


# -------------------------------------------------------------------------------------------- DICOM

def _open_dicom(path: Path, *, pixels: bool) -> pydicom.Dataset:
    """dcmread and the checks that need no pixels (one gray frame); DataError names the file."""
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
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
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
        hint = "" if syntax in UNCOMPRESSED else (
            " A compressed DICOM needs a decoder plugin, e.g. "
            "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`.")
        reason = " ".join(str(error).split())  # pydicom gives each plugin's reason a line
        name = getattr(syntax, "name", syntax)
        raise DataError(f"{path}: cannot decode the pixel data ({name}): {reason}.{hint}"
                        ) from error
    if pixels.ndim != 2:
        raise DataError(f"{path}: pixel array of shape {pixels.shape}; expected a single 2-D image")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    finite, bad = None, 0
    if pixels.dtype.kind == "f":  # float pixels have no nominal range: the image's own finite one
        finite = np.isfinite(pixels)
        bad = pixels.size - int(np.count_nonzero(finite))
        if bad == pixels.size:
            raise DataError(f"{path}: all {bad} pixels are NaN or infinite; there is no image to "
                            "read")
        stored = (float(np.min(pixels, where=finite, initial=np.inf)),
                  float(np.max(pixels, where=finite, initial=-np.inf)))
    else:  # the range the stored bits can hold, so intensities mean the same across images
        bits = int(ds.get("BitsStored") or 8 * pixels.dtype.itemsize)
        stored = ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if pixels.dtype.kind == "i"
                  else (0, 2 ** bits - 1))
    low, high = sorted(value * slope + intercept for value in stored)
    padding = _padding(ds, pixels)  # the area outside the detector, found before values change
    voi = None if finite is not None else _display_lut(ds, path, lowest=low)
    image = pixels.astype(np.float32)
    if voi is not None:  # the file says how to show it: as its viewer would, onto [0, 1]
        image *= slope
        image += intercept
        image = voi(image)
    else:  # one affine map, value -> (value * slope + intercept - low) / (high - low)
        image *= slope / max(high - low, 1e-12)
        image += (intercept - low) / max(high - low, 1e-12)
        np.clip(image, 0.0, 1.0, out=image)  # values beyond BitsStored (bad headers) stay in [0, 1]
    if ds.PhotometricInterpretation == "MONOCHROME1":  # 0 = white: invert, so bright means dense
        np.subtract(1.0, image, out=image)
    image[padding] = 0.0
    if bad:  # NaN would spread through every resize and percentile: no data is the darkest
        image[~finite] = 0.0
        print(f"note: {path}: {bad} of {pixels.size} pixels are NaN or infinite; read as the "
              "image's darkest value", file=sys.stderr)
    return image


def _padding(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray | bool:
    """Where PixelPaddingValue (to PixelPaddingRangeLimit), in stored values, marks no image, e.g.
    outside a detector's field: read as black, whatever MONOCHROME1 or a window would make it."""
    try:
        low = int(ds.PixelPaddingValue)
        high = int(ds.get("PixelPaddingRangeLimit", low))
    except (AttributeError, TypeError, ValueError):  # none, or left empty (by an anonymiser)
        return False
    return (pixels >= min(low, high)) & (pixels <= max(low, high))


def _display_lut(ds: pydicom.Dataset, path: Path, *, lowest: float):
    """The VOI LUT (PS3.3 C.11.2) a viewer applies to the file's rescaled values, as a function
    onto [0, 1], or None without a usable one. Mammograms "for presentation" carry one (a window,
    often a sigmoid, or a table); the first is taken where there are several, as viewers do; a
    table that cannot be used gives way to the window, as in pydicom. `lowest`: the rescaled
    values' floor."""
    unusable, chosen = [], None
    if ds.get("VOILUTSequence"):
        try:
            chosen = _voi_table(ds, lowest)
        except Exception as error:  # no descriptor, an entry size the standard does not allow, ...
            unusable.append(f"VOI LUT table ({' '.join(str(error).split())})")
    if chosen is None and ("WindowCenter" in ds or "WindowWidth" in ds):
        try:
            chosen = _voi_window(ds)
        except (TypeError, ValueError, IndexError, KeyError) as error:  # empty, NaN, width 0
            unusable.append(f"window ({error})")
    if unusable:
        instead = "the stored range" if chosen is None else "its window"
        print(f"note: {path}: its {' and '.join(unusable)} cannot be used; read by {instead} "
              "instead", file=sys.stderr)
    return chosen


def _voi_table(ds: pydicom.Dataset, lowest: float):
    """The first VOI LUT Sequence item as a lookup onto [0, 1]; ValueError if unusable."""
    descriptor = ds.VOILUTSequence[0].LUTDescriptor  # (entries, first value mapped, bits)
    entries, listed = int(descriptor[0]) or 2**16, int(descriptor[1])
    # the entries in order, as pydicom decodes them (US or OW, either byte order): its ramp mapped
    table = apply_voi(np.arange(listed, listed + entries), ds).astype(np.float32)
    if table.shape != (entries,) or table.max() <= 0:
        raise ValueError(f"{table.size} entries, the largest {table.max():g}")
    # its own top, not the descriptor's bits: some files declare 16 bits for 12-bit entries
    table /= float(table.max())
    # A negative first value, read where the VR is implicit as unsigned: 0xFC00 is -1024
    first = listed - 2**16 if listed >= 2**15 and lowest < 0 else listed

    def lookup(values: np.ndarray) -> np.ndarray:  # in place: a full-field mammogram is large
        np.rint(values, out=values)
        values -= first
        # values below the first entry take it, above the last the last (C.11.2.1.1)
        np.clip(values, 0, entries - 1, out=values)
        return table[values.astype(np.int32)]
    return lookup


def _voi_window(ds: pydicom.Dataset):
    """The first Window Center/Width as a function onto [0, 1]; ValueError if unusable."""
    one = lambda value: float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)
    center, width = one(ds.WindowCenter), one(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if (function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or not math.isfinite(center)
            or not width > 0 or not math.isfinite(width) or (function == "LINEAR" and width < 1)):
        raise ValueError(f"{function} at {center:g} with width {width:g}, not one the standard "
                         "allows")
    if function == "LINEAR":  # C.11.2.1.2.1: the window's ends at c - 0.5 -/+ (w - 1) / 2
        center, width = center - 0.5, width - 1

    def window(values: np.ndarray) -> np.ndarray:  # in place: a full-field mammogram is large
        values -= center
        if function == "SIGMOID":  # C.11.2.1.3.1: 1 / (1 + exp(-4 (x - c) / w))
            values *= -4.0 / width
            with np.errstate(over="ignore"):  # exp overflows to inf far below the centre: 0
                np.exp(values, out=values)
            values += 1.0
            return np.reciprocal(values, out=values)
        if width == 0:  # LINEAR with width 1: a threshold at the centre
            return np.greater(values, 0, out=values, casting="unsafe")
        values /= width
        values += 0.5
        return np.clip(values, 0.0, 1.0, out=values)
    return window


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """One grayscale DICOM as (H, W) float32 in [0, 1]: rescaled, through the file's VOI LUT
    (window or table) where it has one, else its stored range onto [0, 1] (float pixels: their
    finite range); MONOCHROME1 inverted, padding black; else DataError naming the file."""
    path = Path(path)
    try:
        return _read_dicom(path)
    except (DataError, MemoryError):
        raise
    except Exception as error:  # malformed tags: ValueError/TypeError/KeyError deep in pydicom
        raise DataError(f"{path}: unreadable DICOM ({type(error).__name__}: {error})") from error


def dicom_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) from the header alone; DataError for no usable image or a truncated file."""
    try:
        ds = _open_dicom(path, pixels=False)
        rows, columns = int(ds.Rows), int(ds.Columns)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        expected = rows * columns * int(ds.BitsAllocated) // 8  # uncompressed pixel bytes
    except DataError:
        raise
    except Exception as error:  # missing Rows/Columns or malformed values
        raise DataError(f"{path}: unreadable DICOM header ({type(error).__name__}: "
                        f"{error})") from error
    if syntax in UNCOMPRESSED and path.stat().st_size < expected:
        raise DataError(f"{path}: truncated ({path.stat().st_size} bytes, the {rows}x{columns} "
                        f"pixels alone need {expected}); download it again")
    return rows, columns


# -------------------------------------------------------------------------- Image files of any kind

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm")


def is_dicom(path: Path) -> bool:
    """A DICOM by its suffix or its "DICM" marker at byte 128; OSError if it cannot be read."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as file:
        return file.read(132)[128:] == b"DICM"


def dicom_pixel_spacing(path: Path) -> tuple[float, float, str] | None:
    """(row mm, column mm, tag) from PixelSpacing, else ImagerPixelSpacing; None if neither."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):  # the latter at the detector, unmagnified
        try:
            rows, columns = (float(value) for value in header.get(tag) or ())
        except (TypeError, ValueError):  # absent, not two numbers
            continue
        if rows > 0 and columns > 0:
            return rows, columns, tag
    return None


def read_image_file(path: Path) -> tuple[np.ndarray, bool, tuple[float, float, str] | None]:
    """(H, W) gray or (H, W, 3) RGB float32 in [0, 1], whether it is a DICOM, its pixel spacing;
    8-bit files are divided by 255, 16-bit ones by 65535; else DataError naming the file."""
    try:
        dicom = is_dicom(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from error
    if dicom:
        return read_dicom(path), True, dicom_pixel_spacing(path)
    try:
        with Image.open(path) as file:
            mode, pages = file.mode, getattr(file, "n_frames", 1)
            if pages != 1:  # as a multi-frame DICOM: which page is the scan is not ours to guess
                raise DataError(f"{path}: {pages} pages; expected a single 2-D image")
            if mode == "F":
                raise DataError(f"{path}: floating-point pixels have no known range; save 8- or "
                                "16-bit gray or RGB")
            if not mode.startswith("I"):
                gray = mode in ("1", "L", "LA")
                eight = np.asarray(file.convert("L" if gray else "RGB"))
                # one float32 array: 4 bytes a pixel
                return np.divide(eight, 255, dtype=np.float32), False, None
            pixels = np.asarray(file)  # 16-bit gray: "I;16" (older Pillow opens 16-bit PNGs as "I")
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # UnidentifiedImageError, a
        # truncated file; Pillow's PGM/PPM reader raises ValueError for a damaged header or value
        raise DataError(f"{path}: cannot read the image ({error})") from error
    except Image.DecompressionBombError as error:  # over 2 x MAX_IMAGE_PIXELS: beyond any mammogram
        raise DataError(f"{path}: {error}") from error
    if pixels.min() < 0 or pixels.max() > 65535:  # a 32-bit "I" must hold 16-bit values
        raise DataError(f"{path}: {mode} pixels outside 0..65535; save the image as 8- or 16-bit "
                        "gray or RGB")
    return np.divide(pixels, 65535, dtype=np.float32), False, None


# -------------------------------------------------------------------------- Mammogram preprocessing

def _largest_component(foreground: np.ndarray) -> np.ndarray:
    """Largest 8-connected region of a small bool image."""
    height, width = foreground.shape
    labels = np.where(foreground, np.arange(1, height * width + 1).reshape(height, width), 0)
    while True:  # each pixel takes the largest id around it, then the id that id's pixel holds:
        padded = np.pad(labels, 1)  # pointer jumping settles in a few rounds, not one per pixel
        grown = np.maximum.reduce([padded[dy:dy + height, dx:dx + width]
                                   for dy in range(3) for dx in range(3)])
        grown = np.where(foreground, grown.ravel()[np.maximum(grown, 1) - 1], 0)
        if np.array_equal(grown, labels):
            break
        labels = grown
    values, counts = np.unique(labels[foreground], return_counts=True)
    return labels == values[counts.argmax()] if values.size else foreground


def _breast_box(image: np.ndarray, masks: list[np.ndarray]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the largest bright region, widened to hold every lesion."""
    step = max(1, max(image.shape) // 256)
    small = image[::step, ::step]
    low, high = np.percentile(small, (1, 99))
    breast = _largest_component(small > low + 0.1 * (high - low))  # labels and marks are smaller
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
    """Area-resize one lesion's mask, keeping the pixels at least half covered."""
    lit = Image.fromarray(np.where(mask, np.uint8(255), np.uint8(0)))
    coverage = np.asarray(lit.resize(size[::-1], Image.BOX))
    resized = coverage >= 128
    # A lesion that would vanish keeps its best-covered pixel (or its centre's): Dice punishes a
    # lesion that disappears, and small masses must survive a 12-20x reduction.
    if not resized.any() and mask.any():
        if coverage.max() > 0:
            resized = coverage == coverage.max()
        else:
            row, col = np.argwhere(mask).mean(0)
            resized[int(row * size[0] / mask.shape[0]), int(col * size[1] / mask.shape[1])] = True
    return resized


def faces_right(image: np.ndarray) -> bool:
    """True when the breast is on the right: the right half of the (H, W) image is brighter."""
    half = image.shape[1] // 2
    return bool(image[:, -half:].sum() > image[:, :half].sum())


def fitted_size(original: tuple[int, int], size: tuple[int, int],
                zoom: float = 1.0) -> tuple[int, int]:
    """(h, w) of an (H, W) image scaled to just fit inside `size`, times `zoom`: at zoom 1 the
    content, top-left, of keep_aspect's and transform_voc's letterbox (prediction crops it out)."""
    scale = min(size[0] / original[0], size[1] / original[1]) * zoom
    return max(1, round(original[0] * scale)), max(1, round(original[1] * scale))


def stretch_contrast(image: np.ndarray) -> np.ndarray:
    """The image's 0.5th..99.5th percentiles onto [0, 1], clipped: every mammogram, real or
    synthetic, spans the same range whatever its scanner, bit depth or exposure."""
    low, high = np.percentile(image, (0.5, 99.5))
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def preprocess_mammogram(image: np.ndarray, masks: list[np.ndarray], size: tuple[int, int], *,
                         orient: bool = True, crop_breast: bool = False, keep_aspect: bool = False,
                         labels: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W) in [0, 1] and one bool mask per lesion -> float32 image, uint8 mask of `size`.

    labels: each mask's class (default 1: a lesion); later masks win where two overlap."""
    if crop_breast:
        top, bottom, left, right = _breast_box(image, masks)
        image = image[top:bottom, left:right]
        masks = [mask[top:bottom, left:right] for mask in masks]
    # stretched to `size`, as the thesis' 256x256; keep_aspect: the longer side fits, padded
    inner = fitted_size(image.shape, size) if keep_aspect else size
    pixels = torch.from_numpy(np.ascontiguousarray(image))[None, None]  # (1, 1, H, W)
    resized = F.interpolate(pixels, size=inner, mode="bilinear", antialias=True,
                            align_corners=False)[0, 0].numpy()
    resized = stretch_contrast(resized)
    mask = np.zeros(inner, dtype=np.uint8)
    for lesion, label in zip(masks, labels or [1] * len(masks)):
        mask[_resize_mask(lesion, inner)] = label
    if orient and faces_right(resized):  # mirror it to the left
        resized, mask = resized[:, ::-1], mask[:, ::-1]
    out_image, out_mask = np.zeros(size, np.float32), np.zeros(size, np.uint8)
    out_image[:inner[0], :inner[1]], out_mask[:inner[0], :inner[1]] = resized, mask  # pad br
    return out_image, out_mask


def augment_mammogram(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
                      mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """Paired flips, rotation within 10 degrees, scale and shift within 10% and 5%, and a gamma,
    gain and offset jitter of the intensities (ours, not the thesis')."""
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if mirror and rng.random() < 0.5:  # left-right only when the breasts are not oriented
        image, mask = image[:, ::-1], mask[:, ::-1]
    height, width = image.shape
    angle, scale = np.deg2rad(rng.uniform(-10, 10)), rng.uniform(0.9, 1.1)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    shift_x, shift_y = rng.uniform(-0.05, 0.05, 2) * 2  # in affine_grid's [-1, 1] coordinates
    # A rotation in pixels, written in the normalised coordinates of a possibly non-square grid.
    theta = torch.tensor([[[cos, -sin * height / width, shift_x],
                           [sin * width / height, cos, shift_y]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
    pixels = F.grid_sample(torch.from_numpy(image.copy())[None, None], grid,
                           align_corners=False)[0, 0]
    labels = F.grid_sample(torch.from_numpy(mask.astype(np.float32))[None, None], grid,
                           mode="nearest", align_corners=False)[0, 0]
    gamma = np.exp(rng.uniform(-0.22, 0.22))
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
    pixels = (pixels.clamp(0, 1) ** gamma * gain + offset).clamp(0, 1)
    return pixels.numpy(), labels.numpy().astype(np.uint8)
