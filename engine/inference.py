"""From images to predictions (thesis §6): a model's logits for dataset batches (whole, or by
windows, with flip TTA) and for one image as read, prepared like its training data (docs/deploy.md).

    labels, probability = predict_image(model, read_image_file(Path("scan.dcm"))[0], (256, 256))
"""
from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data import fitted_size, preprocess_mammogram, transform_voc
from metrics import predict_labels
from readers.mammograms import faces_right
from recipes import PRESETS

from .cli import UsageError
from .devices import autocast
from .measure import median_seconds
from .panels import to_rgb8
from .windows import sliding_window

# Labels are 8-bit class indices: a 12000 x 12000 scan's take 144 MB, not 1.15 GB.
MAX_CLASSES = 255
# Windows per forward pass on a scan: memory grows with it, not with the windows. A CPU is no faster
# with more (thesis model, 256 x 256: 820 ms a window at 1, 853 at 8), a GPU is.
WINDOW_BATCH = {"cuda": 8, "cpu": 2}


# ------------------------------------------------------------------------------------------ Batches

def to_model_input(images: torch.Tensor, config: dict) -> torch.Tensor:
    """Images in [0, 1] (B, 1 or 3, H, W) -> the model's channels, normalised as its config says."""
    channels = config["in_channels"]
    if images.shape[1] == 1 and channels == 3:  # three equal channels, as data.py does
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] == 3 and channels == 1:  # the luminance: ITU-R 601, as PIL's "L"
        weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images * weights).sum(1, keepdim=True)
    elif images.shape[1] != channels:
        raise ValueError(f"cannot feed {images.shape[1]}-channel images to a {channels}-channel "
                         "model")
    mean = images.new_tensor(config["mean"]).view(1, -1, 1, 1)
    std = images.new_tensor(config["std"]).view(1, -1, 1, 1)
    return (images - mean) / std


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> the lesion's probability (sigmoid) if K = 1, else the softmax."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)


def trained_on_mammograms(checkpoint: dict) -> bool:
    """Whether a model learned from mammograms (else VOC): its run's --dataset, else if binary."""
    args = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
    if args.get("dataset"):
        return args["dataset"] != "voc"
    return checkpoint["model_config"]["num_classes"] == 1


@torch.no_grad()
def model_logits(model: torch.nn.Module, images: torch.Tensor, *, tta: bool = False,
                 amp: str = "none", mammogram: bool | None = None) -> torch.Tensor:
    """Images in [0, 1] (B, C, H, W) -> float32 logits (B, K, H, W) on the model's device; with tta,
    the mean probability of the image and its mirror, in logit form (mammogram None: binary)."""
    device = next(model.parameters()).device
    inputs = to_model_input(images.to(device), model.config)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return model(batch).float()  # scores in fp32, whatever the autocast dtype

    if not tta:
        return forward(inputs)
    if mammogram is None:
        mammogram = model.config["num_classes"] == 1
    # The training augmentation's mirror: vertical for mammograms (their breasts all face left, a
    # left-right mirror is an orientation never seen), left-right for photographs.
    flips = ([], [-2]) if mammogram else ([], [-1])
    probability = sum(to_probabilities(forward(inputs.flip(dims)).flip(dims))
                      for dims in flips) / len(flips)
    # logit p (one channel) or log p: labels (still p > 0.5), resizing and maps treat both alike
    if probability.shape[1] == 1:
        return torch.logit(probability, eps=1e-6)
    return probability.clamp_min(1e-12).log()


def sliding_window_logits(model: torch.nn.Module, images: torch.Tensor,
                          window: tuple[int, int] | None, *, overlap: float = 0.5,
                          batch_size: int = 8, tta: bool = False, amp: str = "none",
                          mammogram: bool | None = None) -> torch.Tensor:
    """model_logits by Gaussian-blended windows (windows.py), flip TTA on each (as nnU-Net)."""
    def forward(crops: torch.Tensor) -> torch.Tensor:
        return model_logits(model, crops, tta=tta, amp=amp, mammogram=mammogram)

    return sliding_window(forward, images, window, overlap=overlap, batch_size=batch_size)


def window_for(checkpoint: dict, size: tuple[int, int]) -> tuple[int, int] | None:
    """A checkpoint's window at input `size`: its training patch, or None (the whole image)."""
    args = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
    patch = args.get("patch_size")
    if not patch:
        return None
    window = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return None if window[0] >= size[0] and window[1] >= size[1] else window


def overlap_for(checkpoint: dict, requested: float | None) -> float:
    """--overlap, else the one the checkpoint's run validated with, else 0.5."""
    args = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
    overlap = next((value for value in (requested, args.get("overlap")) if value is not None), 0.5)
    if not 0 <= overlap < 1:
        raise UsageError(f"--overlap {overlap}: the share of a window its neighbour covers, [0, 1)")
    return overlap


def logits_at_size(logits: torch.Tensor, size: tuple[int, int], *,
                   content: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, K, H, W) -> (1, K, *size): the letterboxed content (top-left h, w) if given, resized."""
    if content is not None:
        logits = logits[:, :, :content[0], :content[1]]
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def predict_dataset_batch(model: torch.nn.Module, images: torch.Tensor,
                          original_sizes: list[tuple[int, int]] | None, *, tta: bool, amp: str,
                          mammogram: bool | None = None, window: tuple[int, int] | None = None,
                          overlap: float = 0.5) -> torch.Tensor | list[torch.Tensor]:
    """Labels of images (B, C, H, W) in [0, 1]: (B, H, W), or given each letterboxed VOC image's
    original (h, w), one label map per image at that size."""
    logits = sliding_window_logits(model, images, window, overlap=overlap, batch_size=len(images),
                                   tta=tta, amp=amp, mammogram=mammogram)
    if original_sizes is None:
        return predict_labels(logits)
    return [predict_labels(logits_at_size(logits[j:j + 1], size,
                                          content=fitted_size(size, images.shape[-2:])))[0]
            for j, size in enumerate(original_sizes)]


@torch.no_grad()
def inference_seconds(model: torch.nn.Module, image: torch.Tensor, *, amp: str = "none",
                      runs: int = 10, window: tuple[int, int] | None = None, overlap: float = 0.5,
                      batch_size: int = 8) -> float:
    """Median seconds of one forward pass (or its windows) on `image` (1, C, H, W) in [0, 1],
    after min(3, runs) warm-ups, a GPU synchronised; NaN for runs = 0."""
    if runs < 1:
        return math.nan
    device = next(model.parameters()).device
    inputs = to_model_input(image.to(device), model.config)

    def forward() -> None:
        with autocast(device, amp):
            sliding_window(model, inputs, window, overlap=overlap, batch_size=batch_size)

    return median_seconds(forward, device=device, warmup=min(3, runs), repeats=runs)


def image_size_for(checkpoints: dict[str, dict], requested: int | None,
                   dataset: str | None = None) -> tuple[int, int]:
    """--image-size, else the one the checkpoints (name -> dict) were trained at, else Table 1's."""
    if requested is None:
        trained = {name: saved["args"]["image_size"] for name, saved in checkpoints.items()
                   if isinstance(saved.get("args"), dict) and saved["args"].get("image_size")}
        if len(set(map(str, trained.values()))) > 1:
            raise UsageError(f"the checkpoints were trained at different image sizes ({trained}); "
                             "pass --image-size to evaluate them all at one")
        if not trained:
            config = next(iter(checkpoints.values()))["model_config"]
            dataset = dataset or ("cbis" if config["num_classes"] == 1 else "voc")
        requested = next(iter(trained.values()), None) or PRESETS[dataset]["image_size"]
    size = tuple(requested) if isinstance(requested, (list, tuple)) else (requested, requested)
    if len(size) != 2 or min(size) < 32 or size[0] % 32 or size[1] % 32:
        raise UsageError(f"--image-size {requested}: sides must be positive multiples of 32 (the "
                         "encoder's output stride)")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------------------------------- One image

def timed_logits(model: torch.nn.Module, batch: torch.Tensor, tta: bool, amp: str,
                 timer: Counter | None, mammogram: bool, window: tuple[int, int] | None = None,
                 overlap: float = 0.5):
    """sliding_window_logits, its seconds (the GPU waited for) added to timer["model"]."""
    start, device = time.perf_counter(), next(model.parameters()).device
    logits = sliding_window_logits(model, batch, window, overlap=overlap,
                                   batch_size=WINDOW_BATCH.get(device.type, 2), tta=tta, amp=amp,
                                   mammogram=mammogram)
    if timer is not None:
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)
        timer["model"] += time.perf_counter() - start
    return logits


def predict_image(model: torch.nn.Module, pixels: np.ndarray, size: tuple[int, int], *,
                  tta: bool = False, amp: str = "none", timer: Counter | None = None,
                  mammogram: bool | None = None, window: tuple[int, int] | None = None,
                  overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """An image as read -> (labels (H, W) uint8, the lesion's or winning class's probability (H, W)
    float32) at its own size; mammogram: trained_on_mammograms (None: binary)."""
    if model.config["num_classes"] > MAX_CLASSES:
        raise ValueError(f"{model.config['num_classes']} classes do not fit 8-bit labels (at most "
                         f"{MAX_CLASSES})")
    height, width = pixels.shape[:2]
    if mammogram is None:
        mammogram = model.config["num_classes"] == 1
    if mammogram:  # an RGB file becomes its luminance (ITU-R 601, PIL's "L")
        luminance = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        gray = pixels if pixels.ndim == 2 else pixels @ luminance
        prepared, _ = preprocess_mammogram(gray, [], size, orient=False)
        mirrored = faces_right(prepared)  # preprocess_mammogram's rule, here so it can be undone
        prepared = np.ascontiguousarray(prepared[:, ::-1] if mirrored else prepared)
        batch = torch.from_numpy(prepared)[None, None]  # (1, 1, h, w)
        # (1, K, h, w) logits, the breast on the left
        logits = timed_logits(model, batch, tta, amp, timer, mammogram, window, overlap)
        logits = logits_at_size(logits.flip(-1) if mirrored else logits, (height, width))
    else:
        rgb = Image.fromarray(to_rgb8(pixels))
        canvas, _ = transform_voc(rgb, Image.new("L", rgb.size), size, None)
        rgb = np.asarray(canvas, dtype=np.float32) / 255
        batch = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, h, w)
        logits = timed_logits(model, batch, tta, amp, timer, mammogram, window, overlap)
        logits = logits_at_size(logits, (height, width), content=fitted_size((height, width), size))
    labels = predict_labels(logits, dtype=torch.uint8)[0]  # (H, W)
    # At full size only the logits (K x 4 bytes a pixel), made the probability in place, and the
    # labels (1 byte a pixel) are held.
    scores = logits[0]  # (K, H, W)
    if scores.shape[0] == 1:
        confidence = scores[0].sigmoid_()
    else:  # the winning class's softmax probability: 1 / sum_k exp(logit_k - max logit)
        confidence = scores.sub_(scores.amax(dim=0)).exp_().sum(dim=0).reciprocal_()
    return labels.cpu().numpy(), confidence.cpu().numpy()
