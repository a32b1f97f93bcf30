"""Training patches cut from a whole preprocessed mammogram (beside the thesis' protocol): a share
centred near a lesion pixel (nnU-Net oversamples one in three), the rest in the breast, each moved
the least needed to lie inside the image (docs/high-resolution.md).

    image, mask = crop_patch(image, mask, (256, 256), 1 / 3, rng, level=0.1)
"""
from __future__ import annotations

import numpy as np

BREAST_LEVEL = 0.1  # after stretch_contrast the film around the breast is ~0, tissue above
LESION_JITTER = 0.25  # a lesion-centred patch's centre is this share of its side from the lesion
IGNORED = 255  # a mask's ignored pixels (losses.IGNORE_INDEX): no lesion to centre a patch on


def patch_origin(breast: np.ndarray, lesion: np.ndarray, patch: tuple[int, int],
                 lesion_share: float, rng: np.random.Generator) -> tuple[int, int]:
    """(top, left) of a patch: near a lesion pixel with probability lesion_share, else in breast."""
    height, width = breast.shape
    pixels = np.flatnonzero(lesion) if rng.random() < lesion_share else np.empty(0, np.intp)
    jitter = [0, 0]
    if pixels.size:  # within a quarter side of the centre, the lesion pixel stays in the patch
        jitter = [int(rng.integers(-int(LESION_JITTER * side), int(LESION_JITTER * side) + 1))
                  for side in patch]
    else:
        pixels = np.flatnonzero(breast)
        if pixels.size == 0:  # a blank image: anywhere
            pixels = np.arange(height * width)
    row, col = divmod(int(pixels[rng.integers(pixels.size)]), width)
    top = min(max(row + jitter[0] - patch[0] // 2, 0), height - patch[0])
    left = min(max(col + jitter[1] - patch[1] // 2, 0), width - patch[1])
    return top, left


def crop_patch(image: np.ndarray, mask: np.ndarray, patch: tuple[int, int], lesion_share: float,
               rng: np.random.Generator, *, level: float) -> tuple[np.ndarray, np.ndarray]:
    """One training patch of an (H, W) image and its mask; the breast: pixels above `level`."""
    lesion = (mask > 0) & (mask != IGNORED)
    top, left = patch_origin(image > level, lesion, patch, lesion_share, rng)
    window = (slice(top, top + patch[0]), slice(left, left + patch[1]))
    return image[window], mask[window]
