"""From images to predictions and pictures (thesis §6, Figs. 7-11): inference, panels, masks for a user's scans.

evaluate.py's command uses these; they are here so that file reads as the evaluation it runs. What lives here:
  * inference     to_model_input (channels and normalisation from the model's config), model_logits (optional
                  flip test-time augmentation, fp32 logits under autocast), logits_at_size (back to the image size).
  * panels        write_panel: image | ground truth | each prediction, labelled with its Dice or IoU, VOC palette.
  * image files   read_image_file (DICOM, PNG, JPEG, PGM), predict_image (prepared like the model's training data),
                  write_prediction (<stem>_mask.png 0/255, <stem>_prob.png, <stem>_overlay.png at the input's size).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from benchmark import median_seconds
from data import DataError, fitted_size, preprocess_mammogram, read_dicom, transform_voc
from losses import IGNORE_INDEX
from mammograms import faces_right
from metrics import BinaryStats, ConfusionMatrix, predict_labels

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".pgm")
LESION_COLOUR, TRUTH_COLOUR, IGNORE_COLOUR = (255, 48, 48), (48, 220, 96), (224, 224, 192)
MIN_TILE_WIDTH = 160  # narrower panel tiles are enlarged (nearest) so their labels fit


# ---------------------------------------------------------------------------------------------------------------------
# Panels (Fig. 7-11): image | ground truth | each prediction

def voc_palette() -> np.ndarray:
    """The Pascal VOC colour map, (256, 3) uint8: the label's bits go, three at a time, into R, G, B from the top."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, colour = label, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette[label] = colour
    return palette


def _rgb8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1], (H, W) or (H, W, 3) -> (H, W, 3) uint8."""
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image must be (H, W) or (H, W, 3) in [0, 1], got shape {pixels.shape}")
    return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)


def _tint(base: np.ndarray, where: np.ndarray, colour: tuple, alpha: float = 0.5) -> np.ndarray:
    tinted = base.astype(np.float32)
    tinted[where] = (1 - alpha) * tinted[where] + alpha * np.asarray(colour, dtype=np.float32)
    return tinted.astype(np.uint8)


def mask_outline(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W) bool: pixels of a labelled region (1-254) within `thickness` pixels of a different label."""
    labels8 = np.asarray(labels).astype(np.uint8)
    low = high = Image.fromarray(labels8)
    for _ in range(thickness):  # t passes of a 3x3 filter = a (2t+1)-square one, much faster on big images
        low, high = low.filter(ImageFilter.MinFilter(3)), high.filter(ImageFilter.MaxFilter(3))
    changes = (np.asarray(low) != labels8) | (np.asarray(high) != labels8)
    return changes & (labels8 > 0) & (labels8 != IGNORE_INDEX)


def _score_text(labels: np.ndarray, target: np.ndarray | None, num_classes: int) -> str:
    """The label under a prediction: its Dice (binary) or mIoU (multiclass), computed by this file's metrics."""
    pred = torch.from_numpy(np.asarray(labels, dtype=np.int64))[None]  # (1, H, W)
    if target is None:
        share = float((pred > 0).double().mean())
        return f"{'lesion' if num_classes <= 2 else 'foreground'} {100 * share:.1f}% of image"
    truth = torch.from_numpy(np.asarray(target, dtype=np.int64))[None]
    if num_classes <= 2:
        stats = BinaryStats()
        stats.update(pred, truth)
        dice = float(stats.per_image()[0][0])
        return "Dice n/a" if math.isnan(dice) else f"Dice {100 * dice:.1f}%"
    matrix = ConfusionMatrix(num_classes)
    matrix.update(pred, truth)
    miou = matrix.mean_iou()
    return "mIoU n/a" if math.isnan(miou) else f"mIoU {100 * miou:.1f}%"


def write_panel(path: str | os.PathLike, image: np.ndarray, target: np.ndarray | None,
                predictions: list[tuple[str, np.ndarray]], num_classes: int) -> None:
    """Write one PNG: image | ground truth | each prediction, each prediction labelled with its Dice or mIoU.

    image: float in [0, 1], (H, W) or (H, W, 3); target: int (H, W), 255 = ignore, or None (no ground truth: the
    predictions are labelled with their foreground share); predictions: (name, int labels (H, W)). num_classes: the
    model's outputs (1 = binary) or label classes (2 = binary); more is multiclass. Binary masks are drawn as a red
    tint on the image, with the ground truth's outline in green; multiclass masks in the VOC palette's colours.
    Tiles narrower than MIN_TILE_WIDTH are enlarged by a whole factor (nearest), so the labels fit.
    """
    base = _rgb8(image)
    height, width = base.shape[:2]
    for name, labels in [("target", target)] * (target is not None) + list(predictions):
        if np.shape(labels) != (height, width):
            raise ValueError(f"write_panel: {name} has shape {np.shape(labels)}, the image {(height, width)}")
    binary, palette = num_classes <= 2, voc_palette()
    truth_edge = None if target is None or not binary else mask_outline(np.asarray(target) == 1)

    def render(labels: np.ndarray, colour: tuple, edge: np.ndarray | None) -> np.ndarray:
        labels = np.asarray(labels)
        if not binary:
            return palette[labels.astype(np.uint8)]  # (H, W, 3); 255 = ignore takes the palette's cream
        tile = _tint(_tint(base, labels == 1, colour), labels == IGNORE_INDEX, IGNORE_COLOUR)
        if edge is not None:
            tile[edge] = TRUTH_COLOUR
        return tile

    tiles = [("image", "", base)]
    if target is not None:
        tiles.append(("ground truth" + (" (green)" if binary else ""), "", render(target, TRUTH_COLOUR, None)))
    legend = " (red)" if binary else ""  # the colour of the prediction; the truth's outline stays green
    tiles += [(name + legend, _score_text(labels, target, num_classes), render(labels, LESION_COLOUR, truth_edge))
              for name, labels in predictions]

    scale = max(1, math.ceil(MIN_TILE_WIDTH / width))
    tile_w, tile_h, gap = width * scale, height * scale, 4
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = draw_probe.textbbox((0, 0), "Ag%")[3] + 3
    canvas = Image.new("RGB", (len(tiles) * tile_w + (len(tiles) - 1) * gap, tile_h + 2 * line + 6), "white")
    draw = ImageDraw.Draw(canvas)
    for column, (title, score, pixels) in enumerate(tiles):
        left = column * (tile_w + gap)
        for row, text in enumerate((title, score)):
            while text and draw.textlength(text) > tile_w - 4:  # cut what does not fit the tile
                text = text[:-1]
            draw.text((left + 2, 3 + row * line), text, fill="black")
        canvas.paste(Image.fromarray(pixels).resize((tile_w, tile_h), Image.NEAREST), (left, 2 * line + 6))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ---------------------------------------------------------------------------------------------------------------------
# Inference

def to_model_input(images: torch.Tensor, config: dict) -> torch.Tensor:
    """Images in [0, 1] (B, 1 or 3, H, W) -> the model's channels, normalised with its config's mean and std.

    Gray feeds an RGB model as three equal channels (as data.py does); RGB feeds a gray model as its luminance
    (ITU-R 601 weights, as PIL's "L")."""
    channels = config["in_channels"]
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] == 3 and channels == 1:
        images = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif images.shape[1] != channels:
        raise ValueError(f"cannot feed {images.shape[1]}-channel images to a {channels}-channel model")
    mean = images.new_tensor(config["mean"]).view(1, -1, 1, 1)
    std = images.new_tensor(config["std"]).view(1, -1, 1, 1)
    return (images - mean) / std


def autocast(device: torch.device, amp: str):
    """torch.autocast for --amp none | bf16 | fp16 (train.py uses it too)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> probabilities: the lesion's (sigmoid) for K = 1, each class's (softmax) otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)


@torch.no_grad()
def model_logits(model: torch.nn.Module, images: torch.Tensor, *, tta: bool = False,
                 amp: str = "none") -> torch.Tensor:
    """Images in [0, 1] (B, C, H, W) -> float32 logits (B, K, H, W) on the model's device.

    With tta, the probabilities of the input and of its mirror image (mirrored back) are averaged and returned in
    logit form (logit p for one channel, log p for several), so labels (predict_labels still thresholds at p = 0.5),
    resizing and probability maps treat both alike. The mirror is the one the training augmentation used: vertical
    for the binary mammogram models (their breasts all face left, so a left-right mirror shows an orientation they
    never saw), horizontal for VOC (photographs are never upside down)."""
    device = next(model.parameters()).device
    inputs = to_model_input(images.to(device), model.config)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return model(batch).float()  # scores in fp32, whatever the autocast dtype

    if not tta:
        return forward(inputs)
    flips = ([], [-2]) if model.config["num_classes"] == 1 else ([], [-1])  # the flips the training data used
    probability = sum(to_probabilities(forward(inputs.flip(dims)).flip(dims)) for dims in flips) / len(flips)
    if probability.shape[1] == 1:
        return torch.logit(probability, eps=1e-6)
    return probability.clamp_min(1e-12).log()


def logits_at_size(logits: torch.Tensor, size: tuple[int, int], *,
                   content: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, K, H, W) -> (1, K, *size): crop the letterboxed content (top-left h, w) if given, then resize bilinearly."""
    if content is not None:
        logits = logits[:, :, :content[0], :content[1]]
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def predict_dataset_batch(model: torch.nn.Module, images: torch.Tensor,
                          original_sizes: list[tuple[int, int]] | None, *, tta: bool,
                          amp: str) -> torch.Tensor | list[torch.Tensor]:
    """Labels of dataset images (B, C, H, W) in [0, 1]: (B, H, W) at the input size, or, given each letterboxed VOC
    image's original (h, w), one (h, w) label map per image at that size."""
    logits = model_logits(model, images, tta=tta, amp=amp)
    if original_sizes is None:
        return predict_labels(logits)
    return [predict_labels(logits_at_size(logits[j:j + 1], size, content=fitted_size(size, images.shape[-2:])))[0]
            for j, size in enumerate(original_sizes)]


@torch.no_grad()
def inference_seconds(model: torch.nn.Module, image: torch.Tensor, *, amp: str = "none", runs: int = 10) -> float:
    """Median seconds of one forward pass on `image` (1, C, H, W) in [0, 1], after min(3, runs) warm-up passes
    (benchmark.median_seconds, which synchronises a GPU around each pass); NaN for runs = 0."""
    if runs < 1:
        return math.nan
    device = next(model.parameters()).device
    inputs = to_model_input(image.to(device), model.config)

    def forward() -> None:
        with autocast(device, amp):
            model(inputs)

    return median_seconds(forward, device=device, warmup=min(3, runs), repeats=runs)


# ---------------------------------------------------------------------------------------------------------------------
# Prediction on image files

def is_dicom(path: Path) -> bool:
    """A DICOM file by its suffix, or by the "DICM" marker at byte 128 (PACS exports often have no suffix).
    Raises OSError when the file has no DICOM suffix and cannot be read."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as file:
        return file.read(132)[128:] == b"DICM"


def _marked_dicom(path: Path) -> bool:
    """A file named like no image (IM0001, 1.2.840.113619.2.55.3) that is a DICOM image, found by its marker; the
    DICOMDIR index that PACS exports carry beside the images is a DICOM file too, but not an image."""
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        return is_dicom(path)
    except OSError:  # unreadable, and nothing in its name says it is an image
        return False


def _output_name(path: Path) -> str:
    """scan.dcm -> scan; a DICOM named by its UID (1.2.840.113619.2.55.3) keeps its whole name."""
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def find_inputs(inputs: list[str], output: Path) -> list[tuple[Path, Path]]:
    """(image file, output base) per image: a file as given -> output/<stem>; a folder is searched recursively for
    IMAGE_SUFFIXES and DICOM files named otherwise -> output/<its subfolders>/<stem>, skipping the output folder. Inputs
    that would share an output name keep their suffix in it (scan_dcm, scan_png), then a counter (scan_png_2).
    Raises DataError when the output folder holds an input file, so that nothing beside an input (its ground-truth
    <stem>_mask.png, say) is overwritten, or when a folder holds no image outside the output folder."""
    found, output = [], output.resolve()
    for item in map(Path, inputs):
        if not item.is_dir():
            if item.exists() and output in item.resolve().parents:
                raise DataError(f"--output {output} holds the input {item}: write the masks to another folder, so "
                                "that no file beside the inputs is overwritten")
            found.append((item, output / _output_name(item)))  # a missing or unreadable file: reported when read
            continue
        files = [file for file in sorted(item.rglob("*")) if file.is_file() and not file.name.startswith(".")
                 and output not in file.resolve().parents]
        images = [file for file in files if file.suffix.lower() in IMAGE_SUFFIXES or _marked_dicom(file)]
        if not images and output in [item.resolve(), *item.resolve().parents]:
            raise DataError(f"--input {item} is the --output folder or inside it, whose files are never read as "
                            "inputs: write the masks to another folder")
        found += [(file, output / file.relative_to(item).parent / _output_name(file)) for file in images]
    taken, used, unique = Counter(base for _, base in found), set(), []
    for file, base in found:
        if taken[base] > 1 and file.suffix.lower() in IMAGE_SUFFIXES:
            base = base.with_name(f"{base.name}_{file.suffix.lstrip('.')}")
        name, count = base, 1
        while name in used:
            count += 1
            name = base.with_name(f"{base.name}_{count}")
        used.add(name)
        unique.append((file, name))
    return unique


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

    DICOM is recognised by its suffix or the "DICM" marker at byte 128 and read by data.read_dicom. 8-bit files
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
                return np.asarray(file.convert("L" if gray else "RGB"), dtype=np.float32) / 255, False, None
            pixels = np.asarray(file)  # 16-bit gray: "I;16" (older Pillow opens 16-bit PNGs as 32-bit "I")
    except OSError as error:  # PIL's UnidentifiedImageError, truncated files
        raise DataError(f"{path}: cannot read the image ({error})") from error
    except Image.DecompressionBombError as error:  # over 2 x Image.MAX_IMAGE_PIXELS, far beyond any mammogram
        raise DataError(f"{path}: {error}") from error
    if pixels.min() < 0 or pixels.max() > 65535:
        raise DataError(f"{path}: {mode} pixels outside 0..65535; save the image as 8- or 16-bit gray or RGB")
    return pixels.astype(np.float32) / 65535, False, None


def predict_image(model: torch.nn.Module, pixels: np.ndarray, size: tuple[int, int], *, tta: bool = False,
                  amp: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """An image as read -> (labels (H, W) int64, probability (H, W) float32) at the image's own size.

    The probability is the lesion's for a binary model and the winning class's for a multiclass one. Preprocessing
    follows the model's training data (module docstring): mammogram preprocessing for a binary model, VOC's
    letterbox for a multiclass one."""
    height, width = pixels.shape[:2]
    if model.config["num_classes"] == 1:
        gray = pixels if pixels.ndim == 2 else pixels @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        prepared, _ = preprocess_mammogram(gray, [], size, orient=False)
        mirrored = faces_right(prepared)  # preprocess_mammogram's rule, applied so the mirror can be undone below
        batch = torch.from_numpy(np.ascontiguousarray(prepared[:, ::-1] if mirrored else prepared))[None, None]
        logits = model_logits(model, batch, tta=tta, amp=amp)  # (1, 1, h, w), breast on the left
        logits = logits_at_size(logits.flip(-1) if mirrored else logits, (height, width))
    else:
        rgb = Image.fromarray(_rgb8(pixels))
        canvas, _ = transform_voc(rgb, Image.new("L", rgb.size), size, None)
        batch = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, h, w)
        logits = model_logits(model, batch, tta=tta, amp=amp)
        logits = logits_at_size(logits, (height, width), content=fitted_size((height, width), size))
    probability = to_probabilities(logits)[0]  # (K, H, W)
    confidence = probability[0] if probability.shape[0] == 1 else probability.max(dim=0).values
    return predict_labels(logits)[0].cpu().numpy(), confidence.cpu().numpy()


def _for_display(pixels: np.ndarray) -> np.ndarray:
    """Gray levels stretched between the 0.5th and 99.5th percentiles (raw mammograms are dim); RGB unchanged."""
    if pixels.ndim == 3:
        return pixels
    step = max(1, max(pixels.shape) // 1024)
    low, high = np.percentile(pixels[::step, ::step], (0.5, 99.5))
    return np.clip((pixels - low) / max(high - low, 1e-6), 0, 1)


def write_prediction(base: Path, pixels: np.ndarray, labels: np.ndarray, confidence: np.ndarray,
                     num_classes: int) -> dict[str, str]:
    """<base>_mask.png, <base>_prob.png and <base>_overlay.png at the image's size (module docstring)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = {kind: f"{base}_{kind}.png" for kind in ("mask", "prob", "overlay")}
    palette = voc_palette()
    if num_classes == 1:
        Image.fromarray((labels * 255).astype(np.uint8)).save(paths["mask"])  # 0/255: a 0/1 PNG looks all black
    else:
        mask = Image.fromarray(labels.astype(np.uint8))
        mask.putpalette(palette.ravel().tolist())  # L -> P: pixel values stay the class indices
        mask.save(paths["mask"])
    Image.fromarray(np.round(confidence * 255).astype(np.uint8)).save(paths["prob"])
    overlay = _rgb8(_for_display(pixels))
    edge = mask_outline(labels, thickness=max(1, round(max(labels.shape) / 512)))
    overlay[edge] = LESION_COLOUR if num_classes == 1 else palette[labels[edge]]
    Image.fromarray(overlay).save(paths["overlay"])
    return paths
