"""Sliding-window prediction of a whole image by a network trained on patches (beside the thesis):
overlapping windows weighted by a Gaussian, summed in float32 at the image's resolution, a batch of
windows at a time (docs/high-resolution.md). Needs only torch: the file can be copied anywhere.

    logits = sliding_window(model, images, (256, 256), overlap=0.5, batch_size=8)  # (B, K, H, W)
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

SIGMA_SCALE = 1 / 8  # nnU-Net's and MONAI's Gaussian: sigma = window side / 8
WEIGHT_FLOOR = 1e-3  # of the peak: a window's rim still counts where no other window reaches


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """First pixel of each window along a side: every (1 - overlap) x window, the last flush."""
    if window >= length:
        return [0]
    step = max(1, round(window * (1 - overlap)))  # round: 320 x (1 - 0.9) is 31.99... in floats
    return [*range(0, length - window, step), length - window]


def window_count(size: Sequence[int], window: Sequence[int], overlap: float) -> int:
    """How many windows cover an image of `size`."""
    rows = window_starts(size[0], window[0], overlap)
    return len(rows) * len(window_starts(size[1], window[1], overlap))


def importance_map(window: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(h, w) float32 Gaussian weights, 1 at the window's centre, never below WEIGHT_FLOOR."""
    rows, cols = (torch.exp(-0.5 * ((torch.arange(side, dtype=torch.float32, device=device)
                                     - (side - 1) / 2) / (SIGMA_SCALE * side)) ** 2)
                  for side in window)
    return (rows[:, None] * cols[None, :]).clamp_min(WEIGHT_FLOOR)  # (h, 1) x (1, w) -> (h, w)


def sliding_window(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   window: Sequence[int] | int | None, *, overlap: float = 0.5,
                   batch_size: int = 8) -> torch.Tensor:
    """Logits (B, K, H, W) of images (B, C, H, W) from Gaussian-blended windows of `forward`."""
    height, width = images.shape[-2:]
    window = (window, window) if isinstance(window, int) else window or (height, width)
    h, w = min(window[0], height), min(window[1], width)
    if (h, w) == (height, width):  # a window that covers the image: the plain forward, untouched
        return forward(images)
    weight = importance_map((h, w), images.device)
    spots = [(b, top, left) for b in range(len(images)) for top in window_starts(height, h, overlap)
             for left in window_starts(width, w, overlap)]
    logits = weights = None
    for first in range(0, len(spots), batch_size):  # memory grows with the batch, not the windows
        chunk = spots[first:first + batch_size]
        crops = torch.stack([images[b, :, top:top + h, left:left + w] for b, top, left in chunk])
        scores = forward(crops).float()  # (n, K, h, w): summed in float32 whatever the autocast
        if logits is None:
            logits = scores.new_zeros(len(images), scores.shape[1], height, width)  # (B, K, H, W)
            weights = scores.new_zeros(height, width)  # every image has the same windows
            weight = weight.to(scores.device)
        for (b, top, left), score in zip(chunk, scores):
            logits[b, :, top:top + h, left:left + w] += score * weight
            if b == 0:
                weights[top:top + h, left:left + w] += weight
    return logits.div_(weights)
