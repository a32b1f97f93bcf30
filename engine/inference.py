"""From images to predictions (thesis §6): a model's logits for dataset batches and for one image as read.

  * batches       to_model_input (channels and normalisation from the model's config), model_logits (fp32 logits
                  under autocast, optional flip test-time augmentation), sliding_window_logits
                  (the same by windows, for a model trained on patches: window_for),
                  logits_at_size (back to the image's size), predict_dataset_batch (evaluate.py's
                  labels), inference_seconds (the inference-time column).
  * one image     predict_image: an image as read (mammograms.read_image_file) -> labels and probability at its own
                  size, prepared like the model's training data. prediction.py turns files into mask files with it.

Each image is prepared like the model's training data (trained_on_mammograms: its run's --dataset): a model of a
mammography set (cbis, mias, folder, synthetic; binary or K-class) gets data.py's mammogram preprocessing (resized
to the input size, intensities stretched between the 0.5th and 99.5th percentiles, mirrored so the breast faces left,
and the prediction mirrored back); a VOC model gets VOC's letterbox. The logits are resized back to the original
size. An RGB file given to a 1-channel model becomes its luminance (ITU-R 601, PIL's "L"); a gray file given to an
RGB model is repeated over the three channels. Labels come back as uint8 class indices (at most 255 classes), so a
12000 x 12000 scan's labels take 144 MB, not 1.15 GB.

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
from readers.mammograms import faces_right
from metrics import predict_labels
from .panels import to_rgb8
from recipes import PRESETS
from .cli import UsageError
from .devices import autocast
from .measure import median_seconds
from .windows import sliding_window

MAX_CLASSES = 255  # labels are written as 8-bit class indices
# Windows per forward pass on a scan: memory grows with it, not with the windows. A CPU is no faster
# with more (thesis model, 256 x 256: 820 ms a window at 1, 853 at 8), a GPU is.
WINDOW_BATCH = {"cuda": 8, "cpu": 2}


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


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> probabilities: the lesion's (sigmoid) for K = 1, each class's (softmax) otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)


def trained_on_mammograms(checkpoint: dict) -> bool:
    """Whether a checkpoint's model learned from mammograms (data.py's mammogram preprocessing, vertical flips) or
    from photographs (VOC: letterbox, horizontal flips): its run's --dataset, else (no run recorded) binary models are
    taken for mammogram models and multiclass ones for VOC's."""
    args = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
    if args.get("dataset"):
        return args["dataset"] != "voc"
    return checkpoint["model_config"]["num_classes"] == 1


@torch.no_grad()
def model_logits(model: torch.nn.Module, images: torch.Tensor, *, tta: bool = False, amp: str = "none",
                 mammogram: bool | None = None) -> torch.Tensor:
    """Images in [0, 1] (B, C, H, W) -> float32 logits (B, K, H, W) on the model's device.

    With tta, the probabilities of the input and of its mirror image (mirrored back) are averaged and returned in
    logit form (logit p for one channel, log p for several), so labels (predict_labels still thresholds at p = 0.5),
    resizing and probability maps treat both alike. The mirror is the one the training augmentation used: vertical
    for mammogram models (mammogram=None: the binary ones; their breasts all face left, so a left-right mirror shows
    an orientation they never saw), horizontal for VOC (photographs are never upside down)."""
    device = next(model.parameters()).device
    inputs = to_model_input(images.to(device), model.config)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return model(batch).float()  # scores in fp32, whatever the autocast dtype

    if not tta:
        return forward(inputs)
    if mammogram is None:
        mammogram = model.config["num_classes"] == 1
    flips = ([], [-2]) if mammogram else ([], [-1])  # the flips the training data used
    probability = sum(to_probabilities(forward(inputs.flip(dims)).flip(dims)) for dims in flips) / len(flips)
    if probability.shape[1] == 1:
        return torch.logit(probability, eps=1e-6)
    return probability.clamp_min(1e-12).log()


def sliding_window_logits(model: torch.nn.Module, images: torch.Tensor,
                          window: tuple[int, int] | None, *, overlap: float = 0.5,
                          batch_size: int = 8, tta: bool = False, amp: str = "none",
                          mammogram: bool | None = None) -> torch.Tensor:
    """model_logits by Gaussian-blended windows (windows.py), flip TTA on each window (nnU-Net's);
    a window covering the image (or None) is model_logits itself."""
    def forward(crops: torch.Tensor) -> torch.Tensor:
        return model_logits(model, crops, tta=tta, amp=amp, mammogram=mammogram)

    return sliding_window(forward, images, window, overlap=overlap, batch_size=batch_size)


def window_for(checkpoint: dict, size: tuple[int, int]) -> tuple[int, int] | None:
    """A checkpoint's prediction window at input `size`: its training patch, or None (whole images,
    or a patch that covers the image)."""
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
    """(1, K, H, W) -> (1, K, *size): crop the letterboxed content (top-left h, w) if given, then resize bilinearly."""
    if content is not None:
        logits = logits[:, :, :content[0], :content[1]]
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def predict_dataset_batch(model: torch.nn.Module, images: torch.Tensor,
                          original_sizes: list[tuple[int, int]] | None, *, tta: bool, amp: str,
                          mammogram: bool | None = None, window: tuple[int, int] | None = None,
                          overlap: float = 0.5) -> torch.Tensor | list[torch.Tensor]:
    """Labels of dataset images (B, C, H, W) in [0, 1]: (B, H, W) at the input size, or, given each letterboxed VOC
    image's original (h, w), one (h, w) label map per image at that size. window: by windows."""
    logits = sliding_window_logits(model, images, window, overlap=overlap, batch_size=len(images),
                                   tta=tta, amp=amp, mammogram=mammogram)
    if original_sizes is None:
        return predict_labels(logits)
    return [predict_labels(logits_at_size(logits[j:j + 1], size, content=fitted_size(size, images.shape[-2:])))[0]
            for j, size in enumerate(original_sizes)]


@torch.no_grad()
def inference_seconds(model: torch.nn.Module, image: torch.Tensor, *, amp: str = "none",
                      runs: int = 10, window: tuple[int, int] | None = None, overlap: float = 0.5,
                      batch_size: int = 8) -> float:
    """Median seconds of one forward pass (or of the windows) on `image` (1, C, H, W) in [0, 1],
    after min(3, runs) warm-ups (measure.median_seconds synchronises a GPU); NaN for runs = 0."""
    if runs < 1:
        return math.nan
    device = next(model.parameters()).device
    inputs = to_model_input(image.to(device), model.config)

    def forward() -> None:
        with autocast(device, amp):
            sliding_window(model, inputs, window, overlap=overlap, batch_size=batch_size)

    return median_seconds(forward, device=device, warmup=min(3, runs), repeats=runs)


def image_size_for(checkpoints: dict[str, dict], requested: int | None, dataset: str | None = None) -> tuple[int, int]:
    """The input side: --image-size, else the one every checkpoint (name -> checkpoint dict) was trained at (its
    args), else Table 1's for the dataset (recipes.PRESETS: 256 for mammograms, 384 for VOC)."""
    if requested is None:
        trained = {name: checkpoint["args"]["image_size"] for name, checkpoint in checkpoints.items()
                   if isinstance(checkpoint.get("args"), dict) and checkpoint["args"].get("image_size")}
        if len(set(map(str, trained.values()))) > 1:
            raise UsageError(f"the checkpoints were trained at different image sizes ({trained}); pass --image-size "
                             "to evaluate them all at one")
        if not trained:
            config = next(iter(checkpoints.values()))["model_config"]
            dataset = dataset or ("cbis" if config["num_classes"] == 1 else "voc")
        requested = next(iter(trained.values()), None) or PRESETS[dataset]["image_size"]
    size = tuple(requested) if isinstance(requested, (list, tuple)) else (requested, requested)
    if len(size) != 2 or min(size) < 32 or size[0] % 32 or size[1] % 32:
        raise UsageError(f"--image-size {requested}: sides must be positive multiples of 32 (the encoder's output "
                         "stride)")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------------------------------------------------------------
# One image

def timed_logits(model: torch.nn.Module, batch: torch.Tensor, tta: bool, amp: str, timer: Counter | None,
                 mammogram: bool, window: tuple[int, int] | None = None, overlap: float = 0.5):
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


def predict_image(model: torch.nn.Module, pixels: np.ndarray, size: tuple[int, int], *, tta: bool = False,
                  amp: str = "none", timer: Counter | None = None, mammogram: bool | None = None,
                  window: tuple[int, int] | None = None,
                  overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """An image as read -> (labels (H, W) uint8, probability (H, W) float32) at the image's own size.

    The probability is the lesion's for a binary model and the winning class's for a multiclass one. Preprocessing
    follows the model's training data (module docstring; trained_on_mammograms gives `mammogram`, None: binary
    models are mammogram models): mammogram preprocessing, or VOC's letterbox. At full size only the logits (K x 4
    bytes a pixel), turned into the probability in place, and the labels (1 byte a pixel) are held.
    window: the model runs on windows of that size over the image at `size`."""
    if model.config["num_classes"] > MAX_CLASSES:
        raise ValueError(f"{model.config['num_classes']} classes do not fit 8-bit labels (at most {MAX_CLASSES})")
    height, width = pixels.shape[:2]
    if mammogram is None:
        mammogram = model.config["num_classes"] == 1
    if mammogram:
        gray = pixels if pixels.ndim == 2 else pixels @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        prepared, _ = preprocess_mammogram(gray, [], size, orient=False)
        mirrored = faces_right(prepared)  # preprocess_mammogram's rule, applied so the mirror can be undone below
        batch = torch.from_numpy(np.ascontiguousarray(prepared[:, ::-1] if mirrored else prepared))[None, None]
        # (1, K, h, w) logits, the breast on the left
        logits = timed_logits(model, batch, tta, amp, timer, mammogram, window, overlap)
        logits = logits_at_size(logits.flip(-1) if mirrored else logits, (height, width))
    else:
        rgb = Image.fromarray(to_rgb8(pixels))
        canvas, _ = transform_voc(rgb, Image.new("L", rgb.size), size, None)
        batch = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, h, w)
        logits = timed_logits(model, batch, tta, amp, timer, mammogram, window, overlap)
        logits = logits_at_size(logits, (height, width), content=fitted_size((height, width), size))
    labels = predict_labels(logits, dtype=torch.uint8)[0]  # (H, W)
    scores = logits[0]  # (K, H, W), overwritten below
    if scores.shape[0] == 1:
        confidence = scores[0].sigmoid_()
    else:  # the winning class's softmax probability: 1 / sum_k exp(logit_k - max logit)
        confidence = scores.sub_(scores.amax(dim=0)).exp_().sum(dim=0).reciprocal_()
    return labels.cpu().numpy(), confidence.cpu().numpy()
