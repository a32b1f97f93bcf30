"""From images to predictions (thesis §6): a model's logits for dataset batches and for a user's image files.

  * inference     to_model_input (channels and normalisation from the model's config), model_logits (fp32 logits
                  under autocast, optional flip test-time augmentation), logits_at_size (back to the image's size).
  * image files   find_inputs (files and folders, DICOMs named otherwise found by their marker), read_image_file
                  (DICOM, PNG, JPEG, TIFF, PGM; 8 or 16 bit), predict_image (prepared like the model's training data),
                  write_prediction (<stem>_mask.png 0/255, <stem>_prob.png, <stem>_overlay.png at the input's size).
  * the command   predict_files and run_prediction: what `python predict.py` (and `evaluate.py --input`) does. A file
                  that cannot be read or written, or a folder that cannot be listed, is one FAILED line on stderr and
                  the others go on; the exit code is then 1.

Each image is prepared like the model's training data: a binary (mammogram) model gets data.py's mammogram
preprocessing (resized to the input size, intensities stretched between the 0.5th and 99.5th percentiles, mirrored
so the breast faces left, and the prediction mirrored back); a multiclass (VOC) model gets VOC's letterbox. The logits
are resized back to the original size. An RGB file given to a 1-channel model becomes its luminance (ITU-R 601, PIL's
"L"); a gray file given to an RGB model is repeated over the three channels. Labels come back as uint8 class
indices (at most 255 classes), so a 12000 x 12000 scan's labels take 144 MB, not 1.15 GB.

    labels, probability = predict_image(model, read_image_file(Path("scan.dcm"))[0], (256, 256))
"""
from __future__ import annotations

import errno
import io
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from checkpoints import CheckpointError, load_checkpoint
from data import DataError, cache_folder, fitted_size, preprocess_mammogram, transform_voc
from mammograms import IMAGE_SUFFIXES, faces_right, is_dicom, read_image_file
from metrics import predict_labels
from panels import overlay, to_rgb8, voc_palette
from recipes import PRESETS
from runners import fast_model
from utils import (UsageError, atomic_write, autocast, check_output_folder, check_writable_file, error_line,
                   median_seconds, write_json)
from voc import VOC_CLASSES

MAX_CLASSES = 255  # labels are written as 8-bit class indices


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
    (utils.median_seconds, which synchronises a GPU around each pass); NaN for runs = 0."""
    if runs < 1:
        return math.nan
    device = next(model.parameters()).device
    inputs = to_model_input(image.to(device), model.config)

    def forward() -> None:
        with autocast(device, amp):
            model(inputs)

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
# Prediction on image files

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


def report_failure(records: list[dict], source: str | os.PathLike, message: str) -> None:
    """One input that failed: 'FAILED <message>' on stderr, and its record {"input", "error"} for --json."""
    print(f"FAILED {message}", file=sys.stderr)
    records.append(dict(input=str(source), error=message))


def _files_under(folder: Path, failures: list[dict]) -> list[Path]:
    """Every file below `folder`, symlinked folders not followed (as rglob); a subfolder that cannot be listed is
    reported as a failure (rglob skips it in silence)."""
    files, errors = [], []
    for root, _, names in os.walk(folder, onerror=errors.append):
        files += [Path(root) / name for name in names]
    for error in sorted(errors, key=lambda error: str(error.filename)):
        report_failure(failures, error.filename, f"{error.filename}: cannot list the folder "
                                                 f"({error.strerror or error})")
    return [file for file in files if file.is_file()]


def find_inputs(inputs: list[str], output: Path, failures: list[dict] | None = None) -> list[tuple[Path, Path]]:
    """(image file, output base) per image: a file as given -> output/<stem>; a folder is searched recursively for
    IMAGE_SUFFIXES and DICOM files named otherwise -> output/<its subfolders>/<stem>, skipping the output folder. Inputs
    that would share an output name keep their suffix in it (scan_dcm, scan_png), then a counter (scan_png_2).
    A folder that cannot be listed is one FAILED line on stderr (report_failure, its record added to `failures`).
    Raises DataError when the output folder holds an input file, so that nothing beside an input (its ground-truth
    <stem>_mask.png, say) is overwritten, or when a folder holds no image outside the output folder."""
    found, output, failures = [], output.resolve(), [] if failures is None else failures
    for item in map(Path, inputs):
        if not item.is_dir():
            if item.exists() and output in item.resolve().parents:
                raise DataError(f"--output {output} holds the input {item}: write the masks to another folder, so "
                                "that no file beside the inputs is overwritten")
            found.append((item, output / _output_name(item)))  # a missing or unreadable file: reported when read
            continue
        files = [file for file in sorted(_files_under(item, failures)) if not file.name.startswith(".")
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


def timed_logits(model: torch.nn.Module, batch: torch.Tensor, tta: bool, amp: str, timer: Counter | None):
    """model_logits, its seconds added to timer["model"] (the GPU waited for, so they are the model's own)."""
    start = time.perf_counter()
    logits = model_logits(model, batch, tta=tta, amp=amp)
    if timer is not None:
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)
        timer["model"] += time.perf_counter() - start
    return logits


def predict_image(model: torch.nn.Module, pixels: np.ndarray, size: tuple[int, int], *, tta: bool = False,
                  amp: str = "none", timer: Counter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An image as read -> (labels (H, W) uint8, probability (H, W) float32) at the image's own size.

    The probability is the lesion's for a binary model and the winning class's for a multiclass one. Preprocessing
    follows the model's training data (module docstring): mammogram preprocessing for a binary model, VOC's
    letterbox for a multiclass one. At full size only the logits (K x 4 bytes a pixel), turned into the probability
    in place, and the labels (1 byte a pixel) are held."""
    if model.config["num_classes"] > MAX_CLASSES:
        raise ValueError(f"{model.config['num_classes']} classes do not fit 8-bit labels (at most {MAX_CLASSES})")
    height, width = pixels.shape[:2]
    if model.config["num_classes"] == 1:
        gray = pixels if pixels.ndim == 2 else pixels @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        prepared, _ = preprocess_mammogram(gray, [], size, orient=False)
        mirrored = faces_right(prepared)  # preprocess_mammogram's rule, applied so the mirror can be undone below
        batch = torch.from_numpy(np.ascontiguousarray(prepared[:, ::-1] if mirrored else prepared))[None, None]
        logits = timed_logits(model, batch, tta, amp, timer)  # (1, 1, h, w), breast on the left
        logits = logits_at_size(logits.flip(-1) if mirrored else logits, (height, width))
    else:
        rgb = Image.fromarray(to_rgb8(pixels))
        canvas, _ = transform_voc(rgb, Image.new("L", rgb.size), size, None)
        batch = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, h, w)
        logits = timed_logits(model, batch, tta, amp, timer)
        logits = logits_at_size(logits, (height, width), content=fitted_size((height, width), size))
    labels = predict_labels(logits, dtype=torch.uint8)[0]  # (H, W)
    scores = logits[0]  # (K, H, W), overwritten below
    if scores.shape[0] == 1:
        confidence = scores[0].sigmoid_()
    else:  # the winning class's softmax probability: 1 / sum_k exp(logit_k - max logit)
        confidence = scores.sub_(scores.amax(dim=0)).exp_().sum(dim=0).reciprocal_()
    return labels.cpu().numpy(), confidence.cpu().numpy()


def _pictures(pixels: np.ndarray, labels: np.ndarray, confidence: np.ndarray, num_classes: int):
    """(kind, PIL image) of the three outputs, made one at a time: a 12000 x 12000 scan's overlay alone is 432 MB."""
    labels = np.asarray(labels, dtype=np.uint8)  # no copy when predict_image made them
    if num_classes == 1:
        yield "mask", Image.fromarray(labels * np.uint8(255))  # 0/255: a 0/1 PNG looks all black
    else:
        mask = Image.fromarray(labels)
        mask.putpalette(voc_palette().ravel().tolist())  # L -> P: pixel values stay the class indices
        yield "mask", mask
    scaled = confidence * np.float32(255)
    yield "prob", Image.fromarray(np.round(scaled, out=scaled).astype(np.uint8))
    del scaled
    yield "overlay", Image.fromarray(overlay(pixels, labels, num_classes))


def _why_not_written(error: OSError, path: Path) -> str:
    """The reason a write failed, naming a file or folder that is in the way."""
    if error.errno == errno.EISDIR:
        return "a folder of that name is in the way"
    if error.errno in (errno.EEXIST, errno.ENOTDIR):  # making its folder failed
        blocking = next((parent for parent in path.parents if parent.is_file()), None)
        if blocking is not None:
            return f"{blocking} is a file where a folder must go"
    return error.strerror or str(error)


def write_prediction(base: Path, pixels: np.ndarray, labels: np.ndarray, confidence: np.ndarray,
                     num_classes: int) -> dict[str, str]:
    """<base>_mask.png, <base>_prob.png and <base>_overlay.png at the image's size (module docstring).

    Each PNG is encoded in memory, then written atomically (utils.atomic_write), so no partial or empty file is
    ever left. If one cannot be written, those of this image already written are removed, so a half set is never
    taken for a whole one, and OSError(errno, reason, the path that failed) is raised."""
    kinds = ("mask", "prob", "overlay")
    paths, written = {kind: f"{base}_{kind}.png" for kind in kinds}, []
    try:
        for kind, picture in _pictures(pixels, labels, confidence, num_classes):
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            atomic_write(paths[kind], buffer.getbuffer(), size_hint=buffer.tell())
            written.append(paths[kind])
    except OSError as error:
        for path in written:
            Path(path).unlink(missing_ok=True)
        failed = paths[kinds[len(written)]]
        raise OSError(error.errno, _why_not_written(error, Path(failed)), failed) from error
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# The command

def describe_prediction(source: Path, labels: np.ndarray, confidence: np.ndarray, num_classes: int, is_dicom: bool,
                        spacing: tuple[float, float, str] | None) -> tuple[dict, str]:
    """(record for --json, the line printed) of one predicted image: the predicted area in pixels, % of the image and
    mm^2 when the DICOM gives its pixel spacing, and the largest probability, so an empty mask is obvious."""
    foreground = int(np.count_nonzero(labels))
    record = dict(input=str(source), height=labels.shape[0], width=labels.shape[1], foreground_pixels=foreground,
                  foreground_fraction=foreground / labels.size, area_mm2=None,
                  max_probability=float(confidence.max()) if num_classes == 1 else None)
    line = (f"{source}: {labels.shape[1]}x{labels.shape[0]}, {'lesion' if num_classes == 1 else 'foreground'} "
            f"{foreground} px = {100 * record['foreground_fraction']:.2f}% of the image")
    if spacing is not None:
        record["area_mm2"] = foreground * spacing[0] * spacing[1]
        line += f" = {record['area_mm2']:.1f} mm^2 ({spacing[2]} {spacing[0]:g} x {spacing[1]:g} mm)"
    elif is_dicom:
        line += " (no pixel spacing in the DICOM: no mm^2)"
    if num_classes == 1:
        line += f", max probability {record['max_probability']:.3f}"
        line += "; EMPTY mask: no pixel above probability 0.5" if foreground == 0 else ""
    else:
        names = VOC_CLASSES if num_classes == len(VOC_CLASSES) else [str(c) for c in range(num_classes)]
        counts = torch.bincount(torch.from_numpy(labels).ravel(), minlength=num_classes).tolist()  # one pass
        shares = [f"{names[c]} {100 * count / labels.size:.1f}%" for c, count in enumerate(counts) if c > 0 and count]
        line += "; " + (", ".join(shares) or "background only")
    return record, line


def predict_files(model: torch.nn.Module, inputs: list[str], output: Path, size: tuple[int, int], *, tta: bool,
                  amp: str) -> list[dict]:
    """Predict every input, print one line per image, return one record each. A file that cannot be read or whose
    outputs cannot be written, and a folder that cannot be listed, is one FAILED line on stderr and a record with
    "error"; the others go on."""
    records, seconds = [], Counter()  # seconds: where the time goes, per stage
    found = find_inputs(inputs, output, records)
    if not found and not records:
        raise UsageError(f"--input {' '.join(inputs)}: no {'/'.join(IMAGE_SUFFIXES)} files found")
    started = time.perf_counter()
    for source, base in found:
        try:
            tick = time.perf_counter()
            pixels, is_dicom, spacing = read_image_file(source)
            seconds["read"] += time.perf_counter() - tick
            tick, model_before = time.perf_counter(), seconds["model"]
            labels, confidence = predict_image(model, pixels, size, tta=tta, amp=amp, timer=seconds)
            seconds["prepare"] += time.perf_counter() - tick - (seconds["model"] - model_before)
        except DataError as error:
            report_failure(records, source, error_line(error))
            continue
        try:
            tick = time.perf_counter()
            paths = write_prediction(base, pixels, labels, confidence, model.config["num_classes"])
            seconds["write"] += time.perf_counter() - tick
        except OSError as error:  # a full disk, a name too long, no permission, a file or folder in the way
            report_failure(records, source, f"{source}: cannot write {error.filename} ({error.strerror})")
            continue
        record, line = describe_prediction(source, labels, confidence, model.config["num_classes"], is_dicom,
                                           spacing)
        print(f"{line} -> {paths['mask']}")
        records.append(dict(record, **paths))
    total, done = time.perf_counter() - started, sum("error" not in record for record in records)
    if done:
        shares = ", ".join(f"{stage} {100 * seconds[stage] / total:.0f}%" for stage in ("read", "prepare", "model",
                                                                                      "write"))
        print(f"{done} image(s) in {total:.1f}s = {done / total:.2f} images/s ({shares}; model "
              f"{1000 * seconds['model'] / done:.1f} ms per image)")
    return records


def onnx_cache(checkpoint: str, device: torch.device) -> Path | None:
    """Where a CPU keeps the checkpoint's ONNX export (runners.py); None, with a note, where no cache can be written
    (the model then runs in PyTorch)."""
    if device.type != "cpu":
        return None
    try:
        return cache_folder("onnx", checkpoint)
    except DataError as error:
        print(f"note: {error_line(error)}; predicting without ONNX Runtime", file=sys.stderr)
        return None


def run_prediction(checkpoint: str, inputs: list[str], output: str, *, image_size: int | None, device: torch.device,
                   tta: bool, amp: str, json_path: str | None, backend: str = "auto") -> int:
    """The prediction command (predict.py, evaluate.py --input): the output folder and --json checked first, then
    the model rebuilt from its checkpoint, every input predicted. Returns the exit code: 1 if any file could not be
    read or written, any folder listed, or the --json report written (each one FAILED line on stderr)."""
    output_folder = check_output_folder(output)
    if json_path:
        check_writable_file(json_path, "--json")
    model, saved = load_checkpoint(checkpoint, device)
    if model.config["num_classes"] > MAX_CLASSES:
        raise CheckpointError(f"{checkpoint}: {model.config['num_classes']} classes; masks hold 8-bit class indices, "
                              f"so prediction supports at most {MAX_CLASSES}")
    size = image_size_for({checkpoint: saved}, image_size)
    model = fast_model(model, device, backend=backend, checkpoint=checkpoint, cache=onnx_cache(checkpoint, device),
                       size=size)
    print(f"{checkpoint}: {model.config['encoder']} + {model.config['decoder']}, {model.config['num_classes']} "
          f"output(s), input {size[0]}x{size[1]} on {device} ({type(model).__name__})"
          f"{', with --tta' if tta else ''}")
    records = predict_files(model, inputs, output_folder, size, tta=tta, amp=amp)
    failed = sum("error" in record for record in records)
    print(f"{len(records) - failed} image(s) predicted into {output}{f', {failed} FAILED' if failed else ''}")
    if json_path:
        try:
            write_json(json_path, dict(checkpoint=checkpoint, image_size=list(size), tta=tta, files=records))
        except OSError as error:  # checked before the run, but a disk can fill up during it
            print(f"FAILED --json {json_path}: cannot write it ({error.strerror or error})", file=sys.stderr)
            return 1
    return 1 if failed else 0
