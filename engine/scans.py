"""From image files to mask files (thesis §6): what predict.py and `evaluate.py --input` do.
Inputs are found (folders recursively, DICOMs by their marker) and checked before the model loads,
predicted by engine/inference.py and written as PNGs, each whole or not at all; a file that fails
is one FAILED line on stderr and the others go on (docs/deploy.md).

    run_prediction("best.pt", ["scans/"], "masks/", image_size=None, device=torch.device("cpu"),
                   tta=False, amp="none", json_path=None)
"""
from __future__ import annotations

import errno
import io
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data import DataError, cache_folder
from readers.atomic import atomic_write, write_json
from readers.items import CACHE_VERSION
from readers.mammograms import IMAGE_SUFFIXES, is_dicom, read_image_file
from readers.voc import VOC_CLASSES

from .backends import fast_model
from .checkpoints import CheckpointError, load_checkpoint
from .cli import UsageError, check_output_folder, check_writable_file, error_line
from .inference import (MAX_CLASSES, image_size_for, overlap_for, predict_image,
                        trained_on_mammograms, window_for)
from .panels import overlay, voc_palette

OUTPUT_KINDS = ("mask", "prob", "overlay")  # <base>_<kind>.png for every image
PNG_LEVEL = 1  # zlib: 3x faster than PIL's default 6 on a 12 Mpx overlay (docs/high-resolution.md)


def _marked_dicom(path: Path) -> bool:
    """A file named like no image (IM0001, 1.2.840.113619.2.55.3) that is a DICOM image."""
    if path.name.upper() == "DICOMDIR":  # the index PACS exports carry: a DICOM, but no image
        return False
    try:
        return is_dicom(path)
    except OSError:  # unreadable, and nothing in its name says it is an image
        return False


def _output_name(path: Path) -> str:
    """scan.dcm -> scan; a DICOM named by its UID (1.2.840.113619.2.55.3) keeps its whole name."""
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def report_failure(records: list[dict], source: str | os.PathLike, message: str) -> None:
    """One input that failed: 'FAILED <message>' on stderr, and its record for --json."""
    print(f"FAILED {message}", file=sys.stderr)
    records.append(dict(input=str(source), error=message))


def _files_under(folder: Path, failures: list[dict]) -> list[Path]:
    """Every file below `folder`, symlinked folders not followed (as rglob); a subfolder that
    cannot be listed is reported as a failure (rglob skips it in silence)."""
    files, errors = [], []
    for root, _, names in os.walk(folder, onerror=errors.append):
        files += [Path(root) / name for name in names]
    for error in sorted(errors, key=lambda error: str(error.filename)):
        report_failure(failures, error.filename, f"{error.filename}: cannot list the folder "
                                                 f"({error.strerror or error})")
    return [file for file in files if file.is_file()]


def find_inputs(inputs: list[str], output: Path,
                failures: list[dict] | None = None) -> list[tuple[Path, Path]]:
    """(image file, output base) per image: a file -> output/<stem>, a folder's images ->
    output/<its subfolders>/<stem>; DataError if the output folder holds an input."""
    found, output, failures = [], output.resolve(), [] if failures is None else failures
    for item in map(Path, inputs):
        if not item.is_dir():
            # so that nothing beside an input (its ground-truth <stem>_mask.png) is overwritten
            if item.exists() and output in item.resolve().parents:
                raise DataError(f"--output {output} holds the input {item}: write the masks to "
                                "another folder, so that no file beside the inputs is overwritten")
            # a missing or unreadable file: reported when read
            found.append((item, output / _output_name(item)))
            continue
        files = [file for file in sorted(_files_under(item, failures))
                 if not file.name.startswith(".") and output not in file.resolve().parents]
        images = [file for file in files
                  if file.suffix.lower() in IMAGE_SUFFIXES or _marked_dicom(file)]
        if not images and output in [item.resolve(), *item.resolve().parents]:
            raise DataError(f"--input {item} is the --output folder or inside it, whose files are "
                            "never read as inputs: write the masks to another folder")
        found += [(file, output / file.relative_to(item).parent / _output_name(file))
                  for file in images]
    # A file given twice (itself and its folder, or a shell's overlapping globs) is one image
    first_of = {}
    for file, base in found:
        first_of.setdefault(file.resolve(), (file, base))
    found = list(first_of.values())
    # Inputs that would share an output name keep their suffix (scan_dcm, scan_png), then a
    # counter (scan_png_2).
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


def _pictures(pixels: np.ndarray, labels: np.ndarray, confidence: np.ndarray, num_classes: int,
              kinds: tuple):
    """(kind, PIL image) of the outputs asked, one at a time: a 12000^2 scan's overlay is 432 MB."""
    labels = np.asarray(labels, dtype=np.uint8)  # no copy when predict_image made them
    if "mask" in kinds and num_classes == 1:
        yield "mask", Image.fromarray(labels * np.uint8(255))  # 0/255: a 0/1 PNG looks all black
    elif "mask" in kinds:
        mask = Image.fromarray(labels)
        mask.putpalette(voc_palette().ravel().tolist())  # L -> P: the values stay class indices
        yield "mask", mask
    if "prob" in kinds:
        scaled = confidence * np.float32(255)
        yield "prob", Image.fromarray(np.round(scaled, out=scaled).astype(np.uint8))
        del scaled
    if "overlay" in kinds:
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
                     num_classes: int, save: tuple = OUTPUT_KINDS) -> dict[str, str]:
    """<base>_<kind>.png for each kind in `save`, at the image's size, each written atomically;
    OSError(errno, reason, the path that failed) once this image's written ones are removed."""
    kinds = tuple(kind for kind in OUTPUT_KINDS if kind in save)
    paths, written = {kind: f"{base}_{kind}.png" for kind in kinds}, []
    try:
        for kind, picture in _pictures(pixels, labels, confidence, num_classes, kinds):
            buffer = io.BytesIO()  # encoded in memory: no partial or empty file is ever left
            picture.save(buffer, format="PNG", compress_level=PNG_LEVEL)
            atomic_write(paths[kind], buffer.getbuffer(), size_hint=buffer.tell())
            written.append(paths[kind])
    except BaseException as error:  # a full disk, a name too long; or Ctrl-C between two files
        for path in written:  # a half set is never taken for a whole one
            Path(path).unlink(missing_ok=True)
        if not isinstance(error, OSError):
            raise
        failed = paths[kinds[len(written)]]
        raise OSError(error.errno, _why_not_written(error, Path(failed)), failed) from error
    for kind in set(OUTPUT_KINDS) - set(kinds):  # an earlier prediction's (--overwrite) not asked
        Path(f"{base}_{kind}.png").unlink(missing_ok=True)
    return paths


# ------------------------------------------------------------------------------------- The command
def describe_prediction(source: Path, labels: np.ndarray, confidence: np.ndarray,
                        num_classes: int, is_dicom: bool,
                        spacing: tuple[float, float, str] | None) -> tuple[dict, str]:
    """(record for --json, the line printed) of one image: the predicted area (pixels, %, mm^2)
    and the largest probability, so an empty mask is obvious."""
    foreground = int(np.count_nonzero(labels))
    record = dict(input=str(source), height=labels.shape[0], width=labels.shape[1],
                  foreground_pixels=foreground, foreground_fraction=foreground / labels.size,
                  area_mm2=None,
                  max_probability=float(confidence.max()) if num_classes == 1 else None)
    line = (f"{source}: {labels.shape[1]}x{labels.shape[0]}, "
            f"{'lesion' if num_classes == 1 else 'foreground'} {foreground} px = "
            f"{100 * record['foreground_fraction']:.2f}% of the image")
    if spacing is not None:
        record["area_mm2"] = foreground * spacing[0] * spacing[1]
        line += (f" = {record['area_mm2']:.1f} mm^2 ({spacing[2]} {spacing[0]:g} x "
                 f"{spacing[1]:g} mm)")
    elif is_dicom:
        line += " (no pixel spacing in the DICOM: no mm^2)"
    if num_classes == 1:
        line += f", max probability {record['max_probability']:.3f}"
        line += "; EMPTY mask: no pixel above probability 0.5" if foreground == 0 else ""
    else:
        names = (VOC_CLASSES if num_classes == len(VOC_CLASSES)
                 else [str(c) for c in range(num_classes)])
        counts = torch.bincount(torch.from_numpy(labels).ravel(),  # one pass
                                minlength=num_classes).tolist()
        shares = [f"{names[c]} {100 * count / labels.size:.1f}%"
                  for c, count in enumerate(counts) if c > 0 and count]
        line += "; " + (", ".join(shares) or "background only")
    return record, line


def earlier_outputs(base: Path) -> list[Path]:
    """The files of write_prediction for one image that exist already."""
    found = []
    for path in (Path(f"{base}_{kind}.png") for kind in OUTPUT_KINDS):
        try:
            if path.is_file():
                found.append(path)
        except OSError:  # a name too long to exist is not there
            pass
    return found


def remove_outputs(base: Path) -> None:
    """Remove the files an earlier prediction left for one image (earlier_outputs)."""
    for path in earlier_outputs(base):
        path.unlink(missing_ok=True)


def predict_files(model: torch.nn.Module, found: list[tuple[Path, Path]], records: list[dict],
                  size: tuple[int, int], *, tta: bool, amp: str, mammogram: bool | None = None,
                  window: tuple[int, int] | None = None, overlap: float = 0.5,
                  save: tuple = OUTPUT_KINDS) -> list[dict]:
    """Predict every (image file, output base), one line and one record each; a file that fails
    is a FAILED line and a record with "error", and keeps no outputs."""
    seconds = Counter()  # where the time goes, per stage
    started = time.perf_counter()
    for source, base in found:
        try:
            tick = time.perf_counter()
            pixels, is_dicom, spacing = read_image_file(source)
            seconds["read"] += time.perf_counter() - tick
            tick, model_before = time.perf_counter(), seconds["model"]
            labels, confidence = predict_image(model, pixels, size, tta=tta, amp=amp, timer=seconds,
                                               mammogram=mammogram, window=window, overlap=overlap)
            seconds["prepare"] += time.perf_counter() - tick - (seconds["model"] - model_before)
        except DataError as error:
            report_failure(records, source, error_line(error))
            # not even an earlier prediction's outputs: no mask passes for this run's that is not
            remove_outputs(base)
            continue
        try:
            tick = time.perf_counter()
            paths = write_prediction(base, pixels, labels, confidence, model.config["num_classes"],
                                     save)
            seconds["write"] += time.perf_counter() - tick
        except OSError as error:  # a full disk, a long name, no permission, something in the way
            report_failure(records, source,
                           f"{source}: cannot write {error.filename} ({error.strerror})")
            remove_outputs(base)  # write_prediction removed this run's; these are an earlier run's
            continue
        record, line = describe_prediction(source, labels, confidence, model.config["num_classes"],
                                           is_dicom, spacing)
        print(f"{line} -> {paths.get('mask', next(iter(paths.values())))}")
        records.append(dict(record, **paths))
    total, done = time.perf_counter() - started, sum("error" not in record for record in records)
    if done:
        shares = ", ".join(f"{stage} {100 * seconds[stage] / total:.0f}%"
                           for stage in ("read", "prepare", "model", "write"))
        print(f"{done} image(s) in {total:.1f}s = {done / total:.2f} images/s ({shares}; model "
              f"{1000 * seconds['model'] / done:.1f} ms per image)")
    return records


def onnx_cache(checkpoint: str, device: torch.device) -> Path | None:
    """Where a CPU keeps the checkpoint's ONNX export (engine/backends.py); None, with a note,
    where no cache can be written (the model then runs in PyTorch)."""
    if device.type != "cpu":
        return None
    try:
        return cache_folder("onnx", checkpoint, flag=None)
    except DataError as error:
        print(f"note: {error_line(error)}; predicting without ONNX Runtime", file=sys.stderr)
        return None


def describe_checkpoint(checkpoint: str, saved: dict) -> str:
    """", epoch N, validation <metric> X" for the header; a warning for untrained weights."""
    epoch, metrics, name = saved.get("epoch"), saved.get("metrics"), saved.get("metric_name")
    if epoch == -1:
        print(f"warning: {checkpoint} was saved before the first training epoch: its weights are "
              "untrained and its masks mean nothing; predict with a later last.pt or best.pt",
              file=sys.stderr)
    reading = (saved.get("images") or {}).get("reading")  # None: not mammograms, or an older file
    if reading not in (None, CACHE_VERSION):
        print(f"note: {checkpoint} learnt from mammograms read and prepared by version {reading} "
              f"of the reading, this project's is version {CACHE_VERSION} (docs/data.md says what "
              "changed): its inputs here may differ from those it learnt from", file=sys.stderr)
    text = "" if epoch is None else f", epoch {epoch}"
    if isinstance(metrics, dict) and isinstance(metrics.get(name), float):
        text += f", validation {name} {metrics[name]:.4f}"
    return text


def run_prediction(checkpoint: str, inputs: list[str], output: str, *, image_size: int | None,
                   device: torch.device, tta: bool, amp: str, json_path: str | None,
                   backend: str = "auto", overwrite: bool = False, overlap: float | None = None,
                   save: tuple = OUTPUT_KINDS) -> int:
    """The prediction command: flags, output folder and inputs checked, then the model loaded and
    every input predicted; returns 1 if any file, folder or the --json report failed, else 0."""
    if image_size is not None:
        image_size_for({}, image_size)  # a bad --image-size is refused before the checkpoint
    if overlap is not None:
        overlap_for({}, overlap)  # so is a bad --overlap
    # deepest first; removed again if this call stops on an error before writing anything
    made = [folder for folder in (Path(output), *Path(output).parents) if not folder.exists()]
    output_folder = check_output_folder(output)
    try:
        if json_path:
            check_writable_file(json_path, "--json")
        records: list[dict] = []
        found = find_inputs(inputs, output_folder, records)
        if not found and not records:
            raise UsageError(f"--input {' '.join(inputs)}: no {'/'.join(IMAGE_SUFFIXES)} files "
                             "found")
        # Inputs renamed to keep their outputs apart (scan.dcm, scan.png -> scan_dcm, scan_png) may
        # have been predicted under the plain name before: those files would pass for this run's.
        renamed = ({base.with_name(_output_name(file)) for file, base in found}
                   - {base for _, base in found})
        earlier = [path for base in [*(base for _, base in found), *renamed]
                   for path in earlier_outputs(base)]
        if earlier and not overwrite:
            raise UsageError(f"--output {output} holds {len(earlier)} file(s) of an earlier "
                             f"prediction ({earlier[0]}): choose another folder, or pass "
                             "--overwrite to replace them")
        model, saved = load_checkpoint(checkpoint, device)
        if model.config["num_classes"] > MAX_CLASSES:
            raise CheckpointError(f"{checkpoint}: {model.config['num_classes']} classes; masks "
                                  f"hold 8-bit class indices, so prediction supports at most "
                                  f"{MAX_CLASSES}")
    except BaseException:
        for folder in made:  # nothing was written: leave no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    for base in renamed:  # --overwrite was given
        remove_outputs(base)
    size = image_size_for({checkpoint: saved}, image_size)
    window, overlap = window_for(saved, size), overlap_for(saved, overlap)
    model = fast_model(model, device, backend=backend, checkpoint=checkpoint,
                       cache=onnx_cache(checkpoint, device), size=window or size, amp=amp)
    windows = f" by {window[0]}x{window[1]} windows (overlap {overlap:g})" if window else ""
    print(f"{checkpoint}: {model.config['encoder']} + {model.config['decoder']}, "
          f"{model.config['num_classes']} output(s){describe_checkpoint(checkpoint, saved)}, input "
          f"{size[0]}x{size[1]}{windows} on {device} ({type(model).__name__})"
          f"{', with --tta' if tta else ''}")
    predict_files(model, found, records, size, tta=tta, amp=amp,
                  mammogram=trained_on_mammograms(saved), window=window, overlap=overlap, save=save)
    failed = sum("error" in record for record in records)
    for folder in made if failed == len(records) else []:  # nothing written: no empty folder left
        try:
            folder.rmdir()
        except OSError:  # not empty after all
            break
    print(f"{len(records) - failed} image(s) predicted into {output}"
          f"{f', {failed} FAILED' if failed else ''}")
    if json_path:
        try:
            write_json(json_path, dict(checkpoint=checkpoint, image_size=list(size), tta=tta,
                                       window=list(window) if window else None, overlap=overlap,
                                       files=records))
        except OSError as error:  # checked before the run, but a disk can fill up during it
            print(f"FAILED --json {json_path}: cannot write it ({error.strerror or error})",
                  file=sys.stderr)
            return 1
    return 1 if failed else 0
