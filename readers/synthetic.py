"""Synthetic mammograms: the demo's data and the tests' fixture (the project's shakespeare_char; not
in the thesis). A breast against the chest wall on the left, textured tissue, an optional pectoral
muscle, noise and 0-2 round, lobulated or spiculated masses; data.SyntheticMammograms serves them.

    image, mask = synthetic_mammogram((64, 64), np.random.default_rng(0))  # float32, uint8 {0, 1}
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .mammograms import stretch_contrast

MIN_MASS_RADIUS = 3.0  # pixels; masses scale with the image (2.5-11% of its side) above this


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean noise with blobs about size / cells pixels wide: a coarse grid, upsampled."""
    grid = Image.fromarray(rng.standard_normal((cells, cells), dtype=np.float32))
    return np.asarray(grid.resize(size[::-1], Image.BICUBIC))


def _add_mass(image: np.ndarray, mask: np.ndarray, depth: np.ndarray,
              rng: np.random.Generator) -> None:
    """Draw one mass of random kind, size, contrast and edge sharpness into image and mask."""
    height, width = image.shape
    radius = np.exp(rng.uniform(np.log(0.025), np.log(0.11))) * min(height, width)  # in pixels
    # At least MIN_MASS_RADIUS: at the demo's 64 x 64 a third of the masses were smaller, a few
    # pixels that neither a reader nor the model could tell from the texture (docs/speed.md)
    radius = max(radius, MIN_MASS_RADIUS)
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
    u = dx * np.cos(turn) + dy * np.sin(turn)
    v = (dy * np.cos(turn) - dx * np.sin(turn)) / elongation
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    lobes, amplitude = (((2, 3), 0.04) if kind == "round" else
                        ((rng.integers(3, 6), rng.integers(5, 8)), 0.2))
    outline = radius * (1 + sum(rng.uniform(0, amplitude)
                                * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in lobes))
    distance = (rho - outline) / radius  # < 0 inside the mass
    contrast, softness = rng.uniform(0.06, 0.25), rng.uniform(0.04, 0.25)
    # A soft-edged dome: the border sharpness varies from well-defined to ill-defined masses.
    brightness = (contrast / (1 + np.exp(np.clip(distance / softness, -30, 30)))
                  * (1.15 - 0.3 * rho / (rho.max() + 1)))
    if kind == "spiculated":  # thin bright lines radiating past the border, not part of the mask
        lines = Image.new("L", (dx.shape[1], dy.shape[0]))
        draw = ImageDraw.Draw(lines)
        for angle in rng.uniform(0, 2 * np.pi, rng.integers(6, 15)):
            length = radius * rng.uniform(1.5, 2.8)
            for fade, (start, stop) in zip((255, 170, 85),
                                           ((0.5, 0.75), (0.75, 0.9), (0.9, 1.0))):
                ends = [(cx - left + f * length * np.cos(angle),
                         cy - top + f * length * np.sin(angle)) for f in (start, stop)]
                draw.line(ends, fill=fade, width=1)
        spicules = np.asarray(lines.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
        brightness = brightness + 0.8 * contrast / 255 * spicules
    window = (slice(top, top + dy.shape[0]), slice(left, left + dx.shape[1]))
    breast = depth[window] > 0
    image[window] += brightness * breast
    mask[window] |= (distance < 0) & breast


def synthetic_mammogram(size: tuple[int, int], rng: np.random.Generator, *,
                        mass_probability: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic mammogram: image (H, W) float32 in [0, 1], mask (H, W) uint8, 1 in a mass."""
    height, width = size
    y = np.linspace(-1, 1, height, dtype=np.float32)[:, None]  # (H, 1)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]  # (1, W); the chest wall is at x = 0
    cy, ry, rx = rng.uniform(-0.15, 0.15), rng.uniform(0.7, 0.95), rng.uniform(0.55, 0.9)
    radius = np.sqrt(((y - cy) / ry) ** 2 + (x / rx) ** 2)  # 1 on an elliptic skin line
    radius += 0.03 * _smooth_noise(rng, size, 3)  # an irregular outline
    depth = np.clip((1 - radius) / 0.3, 0, 1)  # 0 outside, rising to 1 behind the skin line
    texture = sum(w * _smooth_noise(rng, size, cells)
                  for cells, w in ((4, 0.5), (9, 0.3), (20, 0.2)))
    image = 0.05 + np.sqrt(depth) * (rng.uniform(0.3, 0.45) + rng.uniform(0.08, 0.16) * texture)
    if rng.random() < 0.5:  # MLO-like view: a brighter pectoral triangle atop the chest wall
        muscle = (x / rng.uniform(0.2, 0.4) + (y + 1) / rng.uniform(0.5, 1.0)) < 1
        image += 0.15 * muscle * (depth > 0)
    mask = np.zeros(size, dtype=bool)
    if rng.random() < mass_probability:
        for _ in range(2 if rng.random() < 0.15 else 1):
            _add_mass(image, mask, depth, rng)
    image += rng.uniform(0.01, 0.03) * rng.standard_normal(size, dtype=np.float32)
    # contrast-stretched as preprocess_mammogram does real ones: prediction sees what training saw
    return stretch_contrast(image), mask.astype(np.uint8)
