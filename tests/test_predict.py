"""predict.py and evaluate.py --input (prediction.py, inference.py): prediction on PNG/JPEG/PGM/DICOM files and
folders, real mammograms from ../shared/data included, checked against data.py's preprocessing run directly; and the
faults that end in one FAILED line while the other images go on: unreadable files, outputs that cannot be written (a
full disk, a name too long, a file or folder in the way), folders that cannot be listed, float DICOMs with NaN pixels.
Models are small (narrow decoders, 64x64)."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import evaluate
from engine import inference
from engine import scans as scan_files
import predict
from engine.checkpoints import CheckpointError
from data import DataError, fitted_size, preprocess_mammogram, read_dicom, transform_voc
from metrics import predict_labels
from model import build_model
from helpers import save_checkpoint, write_dicom
from engine.panels import to_rgb8
from engine.cli import UsageError

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def run(*argv: str) -> int:
    """evaluate.py --input ..., in this process."""
    return evaluate.main(evaluate.get_args_parser().parse_args([str(a) for a in argv]))


def run_predict(*argv: str) -> int:
    """predict.py ..., in this process."""
    return predict.main(predict.get_args_parser().parse_args([str(a) for a in argv]))


def write_png(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mammogram_like(*size, seed) * 255).round().astype(np.uint8)).save(path)
    return path


def failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("FAILED")]


def no_partial_files(folder: Path) -> bool:
    """No empty file and no temporary file left anywhere below `folder`."""
    files = [file for file in folder.rglob("*") if file.is_file()]
    return all(file.stat().st_size > 0 and not file.name.endswith(".tmp") for file in files)


# ---------------------------------------------------------------------------------------------------------------------
# Prediction on files

def scan_dicom(path: Path, height: int, width: int, seed: int, spacing: tuple[float, float] | None = None) -> None:
    """mammogram_like as a 12-bit DICOM, with PixelSpacing when given."""
    write_dicom(path, (mammogram_like(height, width, seed) * 4095).astype(np.uint16), bits_stored=12, spacing=spacing)


def mammogram_like(height: int, width: int, seed: int) -> np.ndarray:
    """A bright half-disc against the RIGHT edge (so the mammogram path must mirror it) plus a blob, in [0, 1]."""
    rows, cols = np.mgrid[:height, :width]
    breast = ((rows - height / 2) / (0.45 * height)) ** 2 + ((cols - width) / (0.6 * width)) ** 2 < 1
    blob = ((rows - height / 2) ** 2 + (cols - 0.75 * width) ** 2) < (0.08 * height) ** 2
    noise = np.random.default_rng(seed).uniform(0, 0.05, (height, width))
    return np.clip(0.05 + 0.5 * breast + 0.3 * blob + noise, 0, 1)


def reference_mask(model, gray: np.ndarray) -> np.ndarray:
    """data.py's mammogram preprocessing (its own orientation rule), the model, mirrored back, resized: 0/1."""
    oriented, _ = preprocess_mammogram(gray.astype(np.float32), [], (64, 64), orient=True)
    plain, _ = preprocess_mammogram(gray.astype(np.float32), [], (64, 64), orient=False)
    mirrored = not np.array_equal(oriented, plain)
    x = (torch.from_numpy(oriented.copy())[None, None] - model.config["mean"][0]) / model.config["std"][0]
    with torch.no_grad():
        logits = model(x)
    logits = logits.flip(-1) if mirrored else logits
    return (F.interpolate(logits, size=gray.shape, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def test_a_class_index_mammogram_model_predicts_on_mammogram_preprocessing(tmp_path, capsys):
    """A K-class model trained on a folder of mammograms (--dataset folder --num-classes 3) sees its images as
    training did, not as VOC photographs: the same input, and the same labels at the image's size, as a binary
    model's path; the rule comes from the run's dataset (trained_on_mammograms)."""
    torch.manual_seed(0)
    model = build_model("resnet34", "unet", num_classes=3, in_channels=1, decoder_channels=(16, 8, 8, 8, 8)).eval()
    folder_run = save_checkpoint(tmp_path / "classes.pt", model, args=dict(image_size=64, dataset="folder"))
    checkpoint = torch.load(folder_run, weights_only=True)
    assert inference.trained_on_mammograms(checkpoint)
    assert not inference.trained_on_mammograms(dict(checkpoint, args=dict(dataset="voc")))
    assert not inference.trained_on_mammograms(dict(checkpoint, args=None))  # no run: multiclass is VOC's
    gray = (np.round(mammogram_like(75, 101, 8) * 255) / 255).astype(np.float32)  # as its 8-bit PNG below reads
    seen = []
    handle = model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    labels, _ = inference.predict_image(model, gray, (64, 64), mammogram=True)
    handle.remove()
    oriented, _ = preprocess_mammogram(gray, [], (64, 64), orient=True)
    mirrored = not np.array_equal(oriented, preprocess_mammogram(gray, [], (64, 64), orient=False)[0])
    expected = (torch.from_numpy(oriented.copy())[None, None] - model.config["mean"][0]) / model.config["std"][0]
    assert torch.allclose(seen[0], expected, atol=1e-6)  # stretched to the square, breast on the left: no letterbox
    with torch.no_grad():
        logits = model(expected).flip(-1) if mirrored else model(expected)
        logits = F.interpolate(logits, size=gray.shape, mode="bilinear", align_corners=False)
    assert np.array_equal(labels, logits.argmax(1)[0].numpy())
    Image.fromarray(np.round(gray * 255).astype(np.uint8)).save(tmp_path / "scan.png")
    assert run_predict("--checkpoint", folder_run, "--input", tmp_path / "scan.png", "--output", tmp_path / "out",
                       "--backend", "eager") == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "scan_mask.png")), labels)


def test_predict_folder_of_png_jpeg_pgm_dicom_with_a_broken_file(checkpoints, tmp_path, capsys):
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    gray = mammogram_like(75, 101, 0)
    Image.fromarray((gray * 255).round().astype(np.uint8)).save(scans / "gray.png")
    Image.fromarray((gray * 65535).round().astype(np.uint16)).save(scans / "deep.png")
    Image.fromarray((gray * 255).round().astype(np.uint8)).save(scans / "sub" / "film.pgm")
    Image.fromarray(np.stack([gray * 255] * 3, axis=2).round().astype(np.uint8)).save(scans / "photo.jpg")
    scan_dicom(scans / "sub" / "scan.dcm", 90, 70, 1, spacing=(0.1, 0.05))
    scan_dicom(scans / "plain.dcm", 40, 50, 2)
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    (scans / "cut.pgm").write_bytes(b"P5\n101 75\n")  # its header ends before the maxval: Pillow's ValueError
    page = Image.fromarray((gray * 255).round().astype(np.uint8))
    page.save(scans / "pages.tif", save_all=True, append_images=[page])  # which page is the scan?
    out = tmp_path / "out"
    exit_code = run("--checkpoint", checkpoints["unet"], "--input", scans, "--output", out,
                    "--json", tmp_path / "p.json")
    assert exit_code == 1  # three files failed, each in one line, the others were written
    captured = capsys.readouterr()
    failed = sorted(Path(line.split()[1].rstrip(":")).name for line in captured.err.splitlines())
    assert failed == ["broken.png", "cut.pgm", "pages.tif"], captured.err
    assert all(line.startswith("FAILED") for line in captured.err.splitlines())
    expected_sizes = {"gray": (101, 75), "deep": (101, 75), "sub/film": (101, 75), "photo": (101, 75),
                      "sub/scan": (70, 90), "plain": (50, 40)}
    records = {Path(r["input"]).name: r for r in json.loads((tmp_path / "p.json").read_text())["files"]}
    for stem, size in expected_sizes.items():
        masks = [Image.open(out / f"{stem}_{kind}.png") for kind in ("mask", "prob", "overlay")]
        assert all(image.size == size for image in masks), stem
        mask = np.asarray(masks[0])
        assert set(np.unique(mask)) <= {0, 255}
        record = records[Path(stem).name + {"sub/scan": ".dcm", "plain": ".dcm", "sub/film": ".pgm",
                                            "photo": ".jpg"}.get(stem, ".png")]
        assert record["foreground_pixels"] == int((mask == 255).sum())
        line = next(line for line in captured.out.splitlines() if line.startswith(record["input"]))
        assert f"lesion {record['foreground_pixels']} px = {100 * (int((mask == 255).sum()) / mask.size):.2f}%" in line
    assert records["scan.dcm"]["area_mm2"] == pytest.approx(records["scan.dcm"]["foreground_pixels"] * 0.005)
    assert "mm^2 (PixelSpacing 0.1 x 0.05 mm)" in captured.out and "no pixel spacing in the DICOM" in captured.out
    # The 8-bit PNG's mask is exactly what data.py's preprocessing + the model + resizing back give.
    model = checkpoints["models"]["unet"]
    png = np.asarray(Image.open(scans / "gray.png"), dtype=np.float32) / 255
    assert np.array_equal(np.asarray(Image.open(out / "gray_mask.png")) == 255, reference_mask(model, png))
    # every input failed: the output folder this call made is not left behind, empty
    assert run("--checkpoint", checkpoints["unet"], "--input", scans / "broken.png", "--output", tmp_path / "a" / "b",
               "--json", tmp_path / "failed.json") == 1
    assert not (tmp_path / "a").exists()


def test_input_discovery_keeps_outputs_apart_and_away_from_the_inputs(tmp_path, monkeypatch):
    scans, out = tmp_path / "scans", tmp_path / "out"
    for folder in ("a", "b"):
        (scans / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(scans / folder / "scan.png")
    scan_dicom(scans / "a" / "scan.dcm", 20, 20, 0)
    scan_dicom(scans / "b" / "IM000001", 20, 20, 0)  # a PACS export's name
    scan_dicom(scans / "b" / "1.2.840.1.3", 20, 20, 0)  # named by its UID
    scan_dicom(scans / "b" / "DICOMDIR", 20, 20, 0)  # stands for the index
    (scans / "b" / "NOTES").write_text("not an image")
    # Files given one by one: same names from different folders never share an output; a file given twice (here
    # also through its folder) is one input.
    files = [scans / "a" / "scan.png", scans / "b" / "scan.png", scans / "a" / "scan.dcm", scans / "b" / "scan.png",
             scans / "b" / ".." / "b" / "scan.png", scans / "a"]
    bases = [base.relative_to(out.resolve()) for _, base in scan_files.find_inputs(list(map(str, files)), out)]
    assert list(map(str, bases)) == ["scan_png", "scan_png_2", "scan_dcm"]
    # A folder: subfolders kept, DICOMs named otherwise found by their marker, the index and the text left alone.
    found = {str(file.relative_to(scans)): str(base.relative_to(out.resolve()))
             for file, base in scan_files.find_inputs([str(scans)], out)}
    assert found == {"a/scan.dcm": "a/scan_dcm", "a/scan.png": "a/scan_png", "b/IM000001": "b/IM000001",
                     "b/1.2.840.1.3": "b/1.2.840.1.3", "b/scan.png": "b/scan"}
    assert scan_files.read_image_file(scans / "b" / "IM000001")[1]  # read as a DICOM
    # Nothing is written beside an input: the output folder may not hold one.
    (scans / "a" / "scan_mask.png").write_bytes(b"the ground truth")
    with pytest.raises(DataError, match="holds the input"):
        scan_files.find_inputs([str(scans / "a" / "scan.png")], scans / "a")
    with pytest.raises(DataError, match="is the --output folder"):
        scan_files.find_inputs([str(scans / "b")], scans / "b")
    assert (scans / "a" / "scan_mask.png").read_bytes() == b"the ground truth"
    # An image too large to decode safely is a one-line DataError, not a crash of the whole run.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(DataError, match="scan.png: Image size"):
        scan_files.read_image_file(scans / "a" / "scan.png")


def test_tta_averages_the_probabilities_of_mirrored_inputs(checkpoints):
    model = checkpoints["models"]["unet"]
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        x = (images - model.config["mean"][0]) / model.config["std"][0]
        average = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(-2))).flip(-2)) / 2  # up-down mirror
    logits = inference.model_logits(model, images, tta=True)
    assert torch.allclose(torch.sigmoid(logits), average, atol=1e-6)
    clear = (average - 0.5).abs() > 1e-5  # a probability within rounding of 0.5 may go either way
    assert torch.equal(predict_labels(logits)[clear[:, 0]], (average > 0.5).long()[:, 0][clear[:, 0]])
    assert torch.equal(inference.model_logits(model, images), model(x).detach())


def test_predict_multiclass_writes_palette_masks(checkpoints, tmp_path, capsys):
    photo = np.random.default_rng(5).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "street.jpg")
    assert run("--checkpoint", checkpoints["voc"], "--input", tmp_path / "street.jpg", "--output", tmp_path / "o",
               "--tta") == 0
    mask = Image.open(tmp_path / "o" / "street_mask.png")
    assert mask.mode == "P" and mask.size == (90, 50) and np.asarray(mask).max() <= 20
    assert Image.open(tmp_path / "o" / "street_overlay.png").size == (90, 50)
    assert "street.jpg: 90x50, foreground" in capsys.readouterr().out


@pytest.mark.slow
def test_predict_script_on_real_mammograms_reports_an_unreadable_file(checkpoints, tmp_path, cbis_sample, mias):
    """python predict.py, as a user types it: CBIS-DDSM (512x512 PNG) and mini-MIAS (1024x1024) files, and one
    broken file."""
    (tmp_path / "bad.pgm").write_bytes(b"P5\n1024 1024\n255\n" + b"\x00" * 100)  # truncated
    inputs = [cbis_sample / "Mass-Training_P_00001_LEFT_CC_FULL.png", mias / "images" / "mdb001.png",
              tmp_path / "bad.pgm"]
    done = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(checkpoints["unet"]), "--input",
                           *map(str, inputs), "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "bad.pgm" in done.stderr and "Traceback" not in done.stderr
    assert Image.open(tmp_path / "out" / "Mass-Training_P_00001_LEFT_CC_FULL_overlay.png").size == (512, 512)
    assert Image.open(tmp_path / "out" / "mdb001_mask.png").size == (1024, 1024)
    assert "2 image(s) predicted" in done.stdout and "1 FAILED" in done.stdout


# ---------------------------------------------------------------------------------------------------------------------
# Faults: each one FAILED line, exit code 1, the other images predicted, no partial file and no half set of outputs

def test_a_full_disk_fails_one_image_and_the_json_report_alone(checkpoints, tmp_path, monkeypatch, capsys):
    scans, out, report = tmp_path / "scans", tmp_path / "out", tmp_path / "report.json"
    for name in ("a", "b", "c"):
        write_png(scans / f"{name}.png", seed=ord(name))
    full, real_replace = {"b_prob.png"}, os.replace  # b's mask gets written, then the disk is full

    def replace(source, target, *args, **kwargs):
        if Path(target).name in full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans, "--output", out, "--json", report) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(
        f"FAILED {scans / 'b.png'}: cannot write {out.resolve() / 'b_prob.png'} (no space left on ")
    assert sorted(file.name for file in out.iterdir()) == [f"{name}_{kind}.png" for name in "ac"
                                                           for kind in ("mask", "overlay", "prob")]  # b's mask gone
    assert no_partial_files(tmp_path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / "a_mask.png").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600
    records = json.loads(report.read_text())["files"]
    assert records[1] == dict(input=str(scans / "b.png"), error=captured.err.strip()[len("FAILED "):])
    assert [sorted(record) for record in records if "error" in record] == [["error", "input"]]
    assert "2 image(s) predicted" in captured.out and "1 FAILED" in captured.out
    # The report, checked before the run, can still meet a full disk at its end: one line, exit 1, the masks kept.
    full = {"report.json"}
    report.unlink()
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans / "a.png", "--output", out, "--json",
                       report, "--overwrite") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"FAILED --json {report}: cannot write it (no space left on ")
    assert not report.exists() and (out / "a_overlay.png").stat().st_size > 0 and no_partial_files(tmp_path)


def test_an_earlier_prediction_is_replaced_only_when_asked_and_a_failed_image_keeps_none(checkpoints, tmp_path,
                                                                                          capsys):
    """predict.py never destroys an earlier prediction unless --overwrite: a second run into the same folder is
    refused in one line before the model loads; with --overwrite an image that now fails keeps none of its earlier
    masks, so no stale mask sits beside the new ones. A flag error leaves no empty output folder."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_png(scans / "a.png", 0), write_png(scans / "b.png", 1)
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans, "--output", out) == 0
    assert "epoch 7" in capsys.readouterr().out  # the checkpoint's epoch in the header line
    earlier = {path.name: path.read_bytes() for path in out.iterdir()}
    assert len(earlier) == 6
    with pytest.raises(UsageError, match=r"holds 6 file\(s\) of an earlier prediction .*pass --overwrite"):
        run_predict("--checkpoint", checkpoints["fusion"], "--input", scans, "--output", out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier  # untouched
    (scans / "b.png").write_bytes(b"no longer a PNG")
    assert run_predict("--checkpoint", checkpoints["fusion"], "--input", scans, "--output", out, "--overwrite") == 1
    assert sorted(path.name for path in out.iterdir()) == ["a_mask.png", "a_overlay.png", "a_prob.png"]
    assert (out / "a_prob.png").read_bytes() != earlier["a_prob.png"]  # the fusion model's now
    # An input that now shares its name (scan.png beside scan.dcm) is renamed: the plain name's files are old ones.
    scan_dicom(scans / "c.dcm", 40, 30, 2)
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans / "c.dcm", "--output", out,
                       "--overwrite") == 0
    write_png(scans / "c.png", 3)
    with pytest.raises(UsageError, match=r"holds 3 file\(s\) of an earlier prediction .*c_mask.png"):
        run_predict("--checkpoint", checkpoints["unet"], "--input", scans / "c.dcm", scans / "c.png", "--output", out)
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans / "c.dcm", scans / "c.png", "--output",
                       out, "--overwrite") == 0
    assert sorted(path.name for path in out.glob("c*")) == [f"c_{suffix}_{kind}.png" for suffix in ("dcm", "png")
                                                             for kind in ("mask", "overlay", "prob")]
    untrained = save_checkpoint(tmp_path / "last.pt", checkpoints["models"]["unet"], epoch=-1,
                                args=dict(image_size=64, dataset="synthetic"))
    capsys.readouterr()
    assert run_predict("--checkpoint", untrained, "--input", scans / "a.png", "--output", tmp_path / "early") == 0
    assert "saved before the first training epoch: its weights are untrained" in capsys.readouterr().err
    older = save_checkpoint(tmp_path / "older.pt", checkpoints["models"]["unet"], images={"reading": 2},
                            args=dict(image_size=64, dataset="folder"))
    assert run_predict("--checkpoint", older, "--input", scans / "a.png", "--output", tmp_path / "older") == 0
    assert "learnt from mammograms read and prepared by version 2 of the reading" in capsys.readouterr().err
    for flags in (["--image-size", "100"], ["--checkpoint", scans / "a.png"]):
        with pytest.raises((UsageError, CheckpointError)):
            run_predict("--checkpoint", checkpoints["unet"], "--input", scans / "a.png", "--output",
                        tmp_path / "new" / "masks", *flags)
        assert not (tmp_path / "new").exists()


def test_a_stop_between_two_outputs_of_an_image_leaves_none_of_them(tmp_path, monkeypatch):
    real_write, calls = scan_files.atomic_write, []

    def write_then_stop(path, content, **options):
        if calls:
            raise KeyboardInterrupt  # Ctrl-C after the mask was written, before the rest
        calls.append(real_write(path, content, **options))

    monkeypatch.setattr(scan_files, "atomic_write", write_then_stop)
    labels = np.zeros((20, 30), np.uint8)
    with pytest.raises(KeyboardInterrupt):
        scan_files.write_prediction(tmp_path / "scan", np.zeros((20, 30), np.float32), labels,
                                    labels.astype(np.float32), num_classes=1)
    assert calls and list(tmp_path.iterdir()) == []  # the mask was written, and removed again


def test_a_name_too_long_and_files_or_folders_in_the_way_fail_alone(checkpoints, tmp_path, capsys):
    """Real faults, no simulation: an overlay name over the file system's limit (the mask's fits exactly), a file
    where an output subfolder must go, a folder where an output file must go."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    stem = "x" * (os.pathconf(tmp_path, "PC_NAME_MAX") - len("_mask.png"))  # <stem>_overlay.png: 3 bytes too long
    for path in (scans / f"{stem}.png", scans / "sub" / "inner.png", scans / "y.png", scans / "z.png"):
        write_png(path, seed=len(path.name))
    out.mkdir()
    (out / "sub").write_text("a file where the subfolder for scans/sub must go")
    (out / "y_overlay.png").mkdir()
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans, "--output", out) == 1
    out = out.resolve()
    assert failed_lines(capsys.readouterr().err) == [
        f"FAILED {scans / 'sub' / 'inner.png'}: cannot write {out / 'sub' / 'inner_mask.png'} ({out / 'sub'} is a "
        "file where a folder must go)",
        f"FAILED {scans / stem}.png: cannot write {out / stem}_overlay.png (File name too long)",
        f"FAILED {scans / 'y.png'}: cannot write {out / 'y_overlay.png'} (a folder of that name is in the way)"]
    assert sorted(file.name for file in out.iterdir()) == ["sub", "y_overlay.png", "z_mask.png", "z_overlay.png",
                                                           "z_prob.png"]  # the masks and probabilities removed
    assert (out / "sub").is_file() and not any((out / "y_overlay.png").iterdir()) and no_partial_files(tmp_path)


def test_a_folder_that_cannot_be_listed_is_reported_and_the_rest_predicted(checkpoints, tmp_path, monkeypatch,
                                                                            capsys):
    scans, out, report = tmp_path / "scans", tmp_path / "out", tmp_path / "report.json"
    for path in ("a.png", "locked/b.png", "open/c.png"):
        write_png(scans / path, seed=len(path))
    real_scandir = os.scandir  # as root, chmod does not stop listing: os.walk's (and rglob's) listing refuses here

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans, "--output", out, "--json", report) == 1
    captured = capsys.readouterr()
    assert captured.err == f"FAILED {scans / 'locked'}: cannot list the folder (Permission denied)\n"
    assert (out / "a_mask.png").exists() and (out / "open" / "c_mask.png").exists() and not (out / "locked").exists()
    records = json.loads(report.read_text())["files"]
    assert records[0] == dict(input=str(scans / "locked"), error=captured.err.strip()[len("FAILED "):])
    assert "2 image(s) predicted" in captured.out and "1 FAILED" in captured.out
    # A folder holding nothing else still says why nothing was predicted: the same line, exit code 1, not 2.
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans / "locked", "--output", out) == 1
    assert failed_lines(capsys.readouterr().err) == [captured.err.strip()]


def write_float_dicom(path: Path, pixels: np.ndarray) -> Path:
    """A 32-bit float MONOCHROME2 DICOM (FloatPixelData, as parametric maps and some processed exports store)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.30", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.FloatPixelData = pixels.astype(np.float32).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_float_dicom_with_non_finite_pixels_reads_them_as_the_darkest(checkpoints, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    pixels = (mammogram_like(48, 40, 3) * 900 - 300).astype(np.float32)  # no nominal range: -300 .. 600
    holes = pixels.copy()
    holes[0, :3], holes[10, 10], holes[20, 30:32] = np.nan, np.inf, -np.inf  # 6 pixels without data
    pixels[~np.isfinite(holes)] = pixels[np.isfinite(holes)].min()  # what they should read as
    write_float_dicom(scans / "clean.dcm", pixels)
    write_float_dicom(scans / "holes.dcm", holes)
    image = read_dicom(scans / "holes.dcm")
    assert image.dtype == np.float32 and np.array_equal(image, read_dicom(scans / "clean.dcm"))
    assert image.min() == 0 and image.max() == 1 and image[0, 0] == 0
    assert capsys.readouterr().err == (f"note: {scans / 'holes.dcm'}: 6 of 1920 pixels are NaN or infinite; read as "
                                       "the image's darkest value\n")
    # Predicted like the clean image, not as NaN everywhere (which gave an empty mask and exit code 0).
    assert run_predict("--checkpoint", checkpoints["unet"], "--input", scans, "--output", tmp_path / "out") == 0
    for kind in ("mask", "prob", "overlay"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"holes_{kind}.png")),
                              np.asarray(Image.open(tmp_path / "out" / f"clean_{kind}.png"))), kind
    assert np.asarray(Image.open(tmp_path / "out" / "holes_prob.png")).max() > 0
    write_float_dicom(scans / "void.dcm", np.full((8, 8), np.nan))
    with pytest.raises(DataError, match="void.dcm: all 64 pixels are NaN or infinite"):
        read_dicom(scans / "void.dcm")


def test_labels_are_uint8_class_indices_and_at_most_255_classes(checkpoints, tmp_path):
    gray = mammogram_like(75, 101, 4).astype(np.float32)
    labels, probability = inference.predict_image(checkpoints["models"]["unet"], gray, (64, 64))
    assert labels.dtype == np.uint8 and probability.dtype == np.float32 and labels.shape == gray.shape
    assert np.array_equal(labels == 1, reference_mask(checkpoints["models"]["unet"], gray))
    assert np.array_equal(labels == 1, probability > 0.5)
    # Multiclass: the labels and the winning class's softmax probability, as computed at full size before.
    model, photo = checkpoints["models"]["voc"], np.random.default_rng(6).uniform(0, 1, (50, 90, 3))
    labels, probability = inference.predict_image(model, photo.astype(np.float32), (64, 64))
    canvas, _ = transform_voc(Image.fromarray(to_rgb8(photo)), Image.new("L", (90, 50)), (64, 64), None)
    batch = torch.from_numpy(np.asarray(canvas, np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, 64, 64)
    logits = inference.logits_at_size(inference.model_logits(model, batch), (50, 90),
                                      content=fitted_size((50, 90), (64, 64)))
    assert labels.dtype == np.uint8 and np.array_equal(labels, predict_labels(logits)[0].numpy())
    assert np.allclose(probability, logits.softmax(dim=1).amax(dim=1)[0].numpy(), atol=1e-6)
    many = build_model("resnet34", "unet", num_classes=256, in_channels=3, decoder_channels=(8, 8, 8, 8, 8))
    with pytest.raises(CheckpointError, match="256 classes; .* at most 255"):
        Image.fromarray((photo * 255).astype(np.uint8)).save(tmp_path / "photo.png")
        run_predict("--checkpoint", save_checkpoint(tmp_path / "many.pt", many), "--input", tmp_path / "photo.png",
                    "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written: no empty folder left
