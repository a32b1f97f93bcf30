"""Pictures of predictions (thesis §6, Fig. 7-11): panels of image | ground truth | each model,
and a prediction's outline over a whole scan.

    write_panel("case.png", image, target, [("fusion", labels)], num_classes=1)
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from metrics import IGNORE_INDEX, BinaryStats, ConfusionMatrix, predict_labels
from .devices import autocast
from .windows import sliding_window

LESION_COLOUR, TRUTH_COLOUR, IGNORE_COLOUR = (255, 48, 48), (48, 220, 96), (224, 224, 192)
MIN_TILE_WIDTH = 160  # narrower panel tiles are enlarged (nearest) so their labels fit


def voc_palette() -> np.ndarray:
    """The Pascal VOC colour map, (256, 3) uint8: a label's bits, three at a time, into R, G, B."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, colour = label, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette[label] = colour
    return palette


def to_rgb8(image: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Float image (H, W) or (H, W, 3), [low, high] shown as black..white -> (H, W, 3) uint8."""
    pixels = np.asarray(image)
    if pixels.ndim not in (2, 3) or pixels.ndim == 3 and pixels.shape[2] != 3:
        raise ValueError(f"image must be (H, W) or (H, W, 3) in [0, 1], got shape "
                         f"{pixels.shape}")
    offset, span = np.float32(low), np.float32(max(high - low, 1e-6))
    rgb = np.empty((*pixels.shape[:2], 3), np.uint8)
    # a block of rows at a time: no full-size float copy of a scan of 10^8 pixels
    for top in range(0, pixels.shape[0], 256):
        block = pixels[top:top + 256].astype(np.float32)  # (rows, W) or (rows, W, 3)
        block -= offset
        block /= span
        np.clip(block, 0, 1, out=block)
        block *= 255
        block += 0.5
        rgb[top:top + 256] = block[:, :, None] if block.ndim == 2 else block  # gray -> 3 channels
    return rgb


def _tint(base: np.ndarray, where: np.ndarray, colour: tuple, alpha: float = 0.5) -> np.ndarray:
    tinted = base.astype(np.float32)
    tinted[where] = (1 - alpha) * tinted[where] + alpha * np.asarray(colour, dtype=np.float32)
    return tinted.astype(np.uint8)


def mask_outline(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W) bool: pixels of a region (labels 1-254) within about `thickness` of another label."""
    labels8 = np.asarray(labels, dtype=np.uint8)  # no copy of uint8 labels: scans hold 10^8 pixels
    height, width = labels8.shape
    small, mixed = labels8, False
    # A thick outline is found on the labels shrunk by `thickness` (a block keeps its largest label,
    # so a small region still shows), then blown up: a few passes, whatever the thickness. A block
    # of two labels is an edge too: its neighbours miss it at the border or if they hold the same.
    if thickness > 1:  # (H, W) -> (H/t, t, W/t, t) blocks -> their maxima (and minima)
        padded = np.pad(labels8, ((0, -height % thickness), (0, -width % thickness)), mode="edge")
        blocks = padded.reshape(padded.shape[0] // thickness, thickness, -1, thickness)
        small = blocks.max(axis=(1, 3))
        mixed = blocks.min(axis=(1, 3)) != small
    image = Image.fromarray(small)
    low, high = image.filter(ImageFilter.MinFilter(3)), image.filter(ImageFilter.MaxFilter(3))
    edge = (np.asarray(low) != small) | (np.asarray(high) != small) | mixed
    if thickness > 1:
        edge = np.repeat(np.repeat(edge, thickness, axis=0), thickness, axis=1)[:height, :width]
    return edge & (labels8 > 0) & (labels8 != IGNORE_INDEX)


def _score_text(labels: np.ndarray, target: np.ndarray | None, num_classes: int) -> str:
    """The label under a prediction: its Dice (binary) or mIoU (multiclass), by metrics.py."""
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
    """One PNG: image (float in [0, 1]) | ground truth (labels, or None) | each prediction (name,
    labels), labelled with its Dice or mIoU. num_classes 1 or 2 is binary, more multiclass."""
    base = to_rgb8(image)
    height, width = base.shape[:2]
    for name, labels in [("target", target)] * (target is not None) + list(predictions):
        if np.shape(labels) != (height, width):
            raise ValueError(f"write_panel: {name} has shape {np.shape(labels)}, the image "
                             f"{(height, width)}")
    binary, palette = num_classes <= 2, voc_palette()
    truth_edge = None if target is None or not binary else mask_outline(np.asarray(target) == 1)

    def render(labels: np.ndarray, colour: tuple, edge: np.ndarray | None) -> np.ndarray:
        labels = np.asarray(labels)
        if not binary:
            return palette[labels.astype(np.uint8)]  # (H, W, 3); 255 = ignore: the palette's cream
        tile = _tint(_tint(base, labels == 1, colour), labels == IGNORE_INDEX, IGNORE_COLOUR)
        if edge is not None:
            tile[edge] = TRUTH_COLOUR
        return tile

    tiles = [("image", "", base)]
    if target is not None:
        tiles.append(("ground truth" + (" (green)" if binary else ""), "",
                      render(target, TRUTH_COLOUR, None)))
    legend = " (red)" if binary else ""  # the colour of the prediction; the truth's outline: green
    tiles += [(name + legend, _score_text(labels, target, num_classes),
               render(labels, LESION_COLOUR, truth_edge))
              for name, labels in predictions]

    scale = max(1, math.ceil(MIN_TILE_WIDTH / width))  # narrow tiles enlarged so their labels fit
    tile_w, tile_h, gap = width * scale, height * scale, 4
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = draw_probe.textbbox((0, 0), "Ag%")[3] + 3
    canvas = Image.new("RGB", (len(tiles) * tile_w + (len(tiles) - 1) * gap, tile_h + 2 * line + 6),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for column, (title, score, pixels) in enumerate(tiles):
        left = column * (tile_w + gap)
        for row, text in enumerate((title, score)):
            while text and draw.textlength(text) > tile_w - 4:  # cut what does not fit the tile
                text = text[:-1]
            draw.text((left + 2, 3 + row * line), text, fill="black")
        canvas.paste(Image.fromarray(pixels).resize((tile_w, tile_h), Image.NEAREST),
                     (left, 2 * line + 6))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def _display_range(pixels: np.ndarray) -> tuple[float, float]:
    """Gray levels shown black..white: the 0.5th and 99.5th percentiles (raw scans are dim)."""
    if pixels.ndim == 3:
        return 0.0, 1.0
    step = max(1, max(pixels.shape) // 1024)
    low, high = np.percentile(pixels[::step, ::step], (0.5, 99.5))
    return float(low), float(high)


def overlay(pixels: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8: the image, stretched for display, with each predicted region's outline."""
    picture = to_rgb8(pixels, *_display_range(pixels))
    edge = mask_outline(labels, thickness=max(1, round(max(labels.shape) / 512)))  # 1/512 of a side
    picture[edge] = LESION_COLOUR if num_classes == 1 else voc_palette()[labels[edge]]
    return picture


@torch.no_grad()
def write_dataset_panels(model, dataset, count: int, folder, device, amp: str,
                         window: int | None = None, overlap: float = 0.5) -> list[str]:
    """Panels of a dataset's first `count` items, named by their ids (train.py's at its end);
    predicted by sliding windows of side `window` if given."""
    model.eval()
    mean, std = (torch.tensor(model.config[k])[:, None, None] for k in ("mean", "std"))
    paths = []
    for index in range(min(count, len(dataset))):
        image, mask = dataset[index]
        with autocast(device, amp):
            logits = sliding_window(model, image[None].to(device), window, overlap=overlap)
            prediction = predict_labels(logits.float())[0].cpu().numpy()
        # un-normalised: (C, H, W) -> (H, W, C) in [0, 1]
        pixels = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        paths.append(str(folder / f"{dataset.ids[index]}.png"))
        write_panel(paths[-1], pixels[..., 0] if pixels.shape[2] == 1 else pixels, mask.numpy(),
                    [(model.config["decoder"], prediction)], model.config["num_classes"])
    return paths
