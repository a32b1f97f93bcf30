"""evaluate.py as a command: metrics on synthetic data and a fake VOC tree (checked against the metric functions run
directly on the same predictions), the comparison table, panels, prediction on PNG/JPEG/PGM/DICOM files (real
mammograms from ../shared/data included) and the one-line errors. Models are small (narrow decoders, 64x64)."""
import json
import math
import runpy
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
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from torch.utils.data import DataLoader

import evaluate
import inference
import panels
from checkpoints import CheckpointError, load_checkpoint
from data import DataError, build_dataset, preprocess_mammogram
from metrics import BinaryStats, ConfusionMatrix, predict_labels
from model import build_model
from panels import write_panel
from utils import UsageError, count_flops

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(decoder_channels=(32, 16, 16, 8, 8))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores shared with other jobs: one intra-op thread avoids OpenMP oversubscription (5x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_checkpoint(path: Path, model, *, prefix: str = "", **extra) -> Path:
    state = {prefix + key: value for key, value in model.state_dict().items()}
    torch.save(dict(model=state, model_config=model.config, **extra), path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two binary 1-channel models (the second saved through DDP + torch.compile) and a 21-class RGB model."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    unet = build_model("resnet34", "unet", num_classes=1, in_channels=1, **SMALL)
    fusion = build_model("resnet34", "fusion", num_classes=1, in_channels=1, **SMALL)
    voc = build_model("resnet34", "unet", num_classes=21, in_channels=3, **SMALL)
    args = dict(image_size=64, dataset="synthetic")
    return dict(unet=save_checkpoint(folder / "unet.pt", unet, args=args, epoch=7),
                fusion=save_checkpoint(folder / "fusion.pt", fusion, prefix="module._orig_mod.", args=args),
                voc=save_checkpoint(folder / "voc.pt", voc, args=dict(image_size=64, dataset="voc")),
                models=dict(unet=unet.eval(), fusion=fusion.eval(), voc=voc.eval()))


def run(*argv: str) -> int:
    return evaluate.main(evaluate.get_args_parser().parse_args([str(a) for a in argv]))


def floats_equal(ours, reference) -> bool:
    """JSON numbers against the metric functions' floats: equal, with JSON's null for NaN."""
    return (ours is None and math.isnan(reference)) or ours == reference


# ---------------------------------------------------------------------------------------------------------------------
# Panels and checkpoints

def test_write_panel_binary_colours_labels_and_size(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (40, 50)).astype(np.float32)
    target = np.zeros((40, 50), np.int64)
    target[10:30, 20:40] = 1
    shifted = np.zeros_like(target)
    shifted[15:35, 20:40] = 1  # overlaps 15 of 20 rows: Dice 2 * 300 / 800 = 75%
    write_panel(tmp_path / "p.png", image, target, [("unet", shifted), ("fusion", target)], num_classes=1)
    panel = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    scale = 4  # ceil(160 / 50): small tiles are enlarged so the labels fit
    top = panel.shape[0] - 40 * scale
    assert panel.shape[1] == 4 * 50 * scale + 3 * 4 and 40 * scale < panel.shape[0] < 40 * scale + 60
    tiles = [panel[top:, c * (50 * scale + 4): c * (50 * scale + 4) + 50 * scale] for c in range(4)]
    gray = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(tiles[0][::scale, ::scale, 0], gray)  # (a) the image, unchanged
    red, green = tiles[2][32 * scale, 30 * scale], tiles[1][20 * scale, 30 * scale]  # predicted only; true lesion
    assert red[0] > red[1] + 60 and green[1] > green[0] + 60
    assert tuple(tiles[2][10 * scale, 30 * scale]) == panels.TRUTH_COLOUR  # ground-truth outline on predictions
    assert panels._score_text(shifted, target, 1) == "Dice 75.0%"
    assert panels._score_text(target, target, 2) == "Dice 100.0%"
    assert panels._score_text(shifted, None, 1) == "lesion 20.0% of image"
    with pytest.raises(ValueError, match="shape"):
        write_panel(tmp_path / "q.png", image, target, [("bad", target[:-1])], num_classes=1)


def test_write_panel_voc_uses_the_palette(tmp_path):
    image = np.random.default_rng(1).uniform(0, 1, (100, 180, 3))
    target = np.zeros((100, 180), np.int64)
    target[20:60, 30:90], target[0] = 15, 255  # person; an ignored row
    pred = target.copy()
    pred[0], pred[70:90, 100:150] = 0, 1  # aeroplane where there is background
    write_panel(tmp_path / "voc.png", image, target, [("bit", pred)], num_classes=21)
    panel = np.asarray(Image.open(tmp_path / "voc.png").convert("RGB"))
    assert panel.shape[1] == 3 * 180 + 2 * 4  # wide enough: no enlargement
    truth, predicted = panel[-100:, 184:364], panel[-100:, 368:548]
    assert tuple(truth[40, 50]) == (192, 128, 128) and tuple(truth[0, 0]) == (224, 224, 192)  # VOC person, ignore
    assert tuple(predicted[80, 120]) == (128, 0, 0) and tuple(predicted[95, 5]) == (0, 0, 0)
    matrix = ConfusionMatrix(21)
    matrix.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    assert panels._score_text(pred, target, 21) == f"mIoU {100 * matrix.mean_iou():.1f}%"
    write_panel(tmp_path / "no_truth.png", image, None, [("bit", pred)], num_classes=21)
    assert Image.open(tmp_path / "no_truth.png").size[0] == 2 * 180 + 4  # image | prediction


def test_load_checkpoint_rebuilds_strips_prefixes_and_rejects_bad_files(checkpoints, tmp_path, capsys):
    model, checkpoint = load_checkpoint(checkpoints["fusion"])
    assert "module._orig_mod." in capsys.readouterr().err  # the stripped prefix is noted
    assert not model.training and checkpoint["args"]["image_size"] == 64
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), checkpoints["models"]["fusion"](x))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save(checkpoints["models"]["unet"].state_dict(), tmp_path / "bare.pt")
    wrong = dict(torch.load(checkpoints["unet"], weights_only=True))
    wrong["model_config"] = dict(wrong["model_config"], decoder_channels=[16, 16, 16, 8, 8])
    torch.save(wrong, tmp_path / "wrong.pt")
    for name, message in (("missing.pt", "not found"), ("garbage.pt", "cannot open"), ("bare.pt", "model_config"),
                          ("wrong.pt", "do not fit")):
        with pytest.raises(CheckpointError, match=message) as error:
            load_checkpoint(tmp_path / name)
        assert name in str(error.value)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics, comparison and panels on a dataset

def reference_binary(model, limit: int, batch_size: int) -> tuple[dict, torch.Tensor]:
    """The metric functions run directly: data.py normalises, the model predicts, BinaryStats counts."""
    dataset = build_dataset("synthetic", None, "val", 64, in_channels=1, mean=model.config["mean"],
                            std=model.config["std"], augment=False, limit=limit)
    stats = BinaryStats()
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            stats.update(predict_labels(model(x)), y)
    return stats.summary(), stats.per_image()[0]


def test_synthetic_metrics_table_disagreements_and_panels(checkpoints, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert run("--checkpoint", checkpoints["unet"], checkpoints["fusion"], "--dataset", "synthetic", "--limit", 8,
               "--batch-size", 3, "--workers", 0, "--timing-runs", 1, "--json", out,
               "--panels", tmp_path / "panels") == 0
    printed, result = capsys.readouterr().out, json.loads(out.read_text())
    assert result["images"] == 8 and result["image_size"] == [64, 64]  # the size recorded in the checkpoints
    dice = {}
    for row in result["models"]:
        model = checkpoints["models"][row["name"]]
        summary, dice[row["name"]] = reference_binary(model, 8, 3)
        assert all(floats_equal(row["metrics"][key], value) for key, value in summary.items()), row["name"]
        assert [row["per_image_dice"][i] for i in sorted(row["per_image_dice"])] == dice[row["name"]].tolist()
        for label, key in (("IoU  pooled", "iou_pooled"), ("Dice pooled", "dice_pooled"),
                           ("sensitivity", "sensitivity")):
            assert f"{label} {100 * summary[key]:.2f}%" in printed
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["flops"] == count_flops(model, (1, 1, 64, 64)) and row["thesis_flops_g"] == row["flops"] / 4 / 1e9
        table_row = next(line for line in printed.splitlines() if line.startswith(f"{row['name']}: resnet34"))
        # The thesis' Tables 2-3 columns are means over images; the pooled values follow, named in the header
        assert table_row.split()[4:8] == [f"{100 * summary[key]:.2f}" for key in (
            "iou_mean_per_image", "dice_mean_per_image", "iou_pooled", "dice_pooled")]
        assert f"{row['params'] / 1e6:.2f} M" in table_row and row["inference_s"] > 0
    assert result["models"][0]["epoch"] == 7

    spread = (dice["unet"] - dice["fusion"]).abs()
    expected = [i for i in sorted(range(8), key=lambda i: -spread[i].item()) if spread[i] > 0][:5]
    assert [d["id"] for d in result["disagreements"]] == [f"synthetic-val-{i:05d}" for i in expected]  # val by default
    assert [d["spread"] for d in result["disagreements"]] == [spread[i].item() for i in expected]
    assert f"synthetic-val-{expected[0]:05d}: unet" in printed

    names = sorted(Path(p).name for p in result["panels"])
    kinds = [name.split("-")[0] for name in names]
    disagreeing = min(3, len(expected))  # an image all models score alike is no disagreement
    assert [kinds.count(k) for k in ("disagreement", "hard", "ordinary")] == [disagreeing, 3, min(3, 5 - disagreeing)]
    assert len({name.split("-", 2)[2] for name in names}) == 8  # every image once
    rest = [i for i in range(8) if i not in expected[:3]]  # the disagreement panels took these
    worst = min(rest, key=lambda i: (dice["unet"][i] + dice["fusion"][i]).item())
    assert f"hard-1-synthetic-val-{worst:05d}.png" in names
    panel = Image.open(tmp_path / "panels" / names[0])
    assert panel.size[0] == 4 * 64 * 3 + 3 * 4  # image | truth | unet | fusion, 64 px tiles enlarged 3x


def test_pick_cases_orders_and_never_repeats():
    scores = np.array([[0.9, 0.1, 0.5, 0.6, np.nan, 0.55],
                       [0.9, 0.2, 0.0, 0.6, 0.3, 0.50]])
    assert evaluate.pick_cases(scores, per_kind=2) == [("disagreement", 2), ("disagreement", 1), ("hard", 5),
                                                     ("hard", 3), ("ordinary", 0)]
    assert evaluate.pick_cases(scores[:1], per_kind=1) == [("hard", 1), ("ordinary", 5)]  # median 0.55
    assert evaluate.pick_cases(np.array([[0.5, 0.2], [0.5, 0.2]]), 1) == [("hard", 1), ("ordinary", 0)]  # no spread


def write_voc(root: Path, sizes: list[tuple[int, int]]) -> tuple[Path, list[str]]:
    """A fake VOCdevkit/VOC2012 val split: JPEG images and palette PNG labels with 255 borders."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    rng, ids = np.random.default_rng(3), []
    for n, (height, width) in enumerate(sizes):
        ids.append(f"2007_{n:06d}")
        labels = np.zeros((height, width), np.uint8)
        labels[height // 4: 3 * height // 4, width // 5: width // 2] = [15, 8, 12][n % 3]
        labels[height // 2:, 2 * width // 3:] = 1 + n
        labels[0], labels[:, -1] = 255, 255
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[labels == 15] //= 3
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{ids[-1]}.jpg")
        label = Image.fromarray(labels)
        label.putpalette(panels.voc_palette().ravel().tolist())
        label.save(voc / "SegmentationClass" / f"{ids[-1]}.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return voc, ids


def test_voc_miou_at_original_resolution_matches_the_metric_functions(checkpoints, tmp_path, capsys):
    sizes = [(45, 60), (70, 33), (64, 64)]
    voc, ids = write_voc(tmp_path / "voc", sizes)
    out = tmp_path / "voc.json"
    assert run("--checkpoint", checkpoints["voc"], "--dataset", "voc", "--data-root", tmp_path / "voc", "--batch-size",
               2, "--workers", 0, "--timing-runs", 1, "--json", out, "--panels", tmp_path / "panels") == 0
    printed, result = capsys.readouterr().out, json.loads(out.read_text())
    row = result["models"][0]
    assert result["split"] == "val" and result["images"] == 3

    model = checkpoints["models"]["voc"]
    dataset = build_dataset("voc", tmp_path / "voc", "val", 64, mean=model.config["mean"], std=model.config["std"],
                            augment=False, verbose=False)
    total, per_image, index = ConfusionMatrix(21), [], 0
    with torch.no_grad():
        for x, _ in DataLoader(dataset, batch_size=2):
            logits = model(x)
            for j in range(len(x)):
                height, width = sizes[index]
                scale = 64 / max(height, width)  # the longer side fits; the rest is padding
                inside = logits[j:j + 1, :, :round(height * scale), :round(width * scale)]
                pred = F.interpolate(inside, size=(height, width), mode="bilinear", align_corners=False).argmax(1)
                target = torch.from_numpy(np.asarray(Image.open(voc / "SegmentationClass" / f"{ids[index]}.png"),
                                                     dtype=np.int64))[None]
                assert pred.shape == target.shape == (1, height, width)
                total.update(pred, target)
                single = ConfusionMatrix(21)
                single.update(pred, target)
                per_image.append(single.mean_iou())
                index += 1
    assert all(floats_equal(row["metrics"][key], value) for key, value in total.summary().items())
    assert [row["per_image_miou"][i] for i in ids] == per_image
    assert f"mIoU {100 * total.mean_iou():.2f}%" in printed and "person" in printed
    table_row = next(line for line in printed.splitlines() if line.startswith("voc: resnet34 + unet"))
    assert table_row.split()[4] == f"{100 * total.mean_iou():.2f}"
    # Panels show the original image and label: 60 px wide -> tiles enlarged 3x, three tiles.
    first = next(p for p in result["panels"] if p.endswith(f"{ids[0]}.png"))
    assert Image.open(first).size == (3 * 60 * 3 + 2 * 4, Image.open(first).size[1])
    assert Image.open(first).size[1] > 45 * 3


# ---------------------------------------------------------------------------------------------------------------------
# Prediction on files

def write_dicom(path: Path, pixels: np.ndarray, spacing: tuple[float, float] | None) -> None:
    """A minimal uncompressed 16-bit MONOCHROME2 DICOM written with pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MG", "TEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if spacing is not None:
        ds.PixelSpacing = [f"{spacing[0]}", f"{spacing[1]}"]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


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


def test_predict_folder_of_png_jpeg_pgm_dicom_with_a_broken_file(checkpoints, tmp_path, capsys):
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    gray = mammogram_like(75, 101, 0)
    Image.fromarray((gray * 255).round().astype(np.uint8)).save(scans / "gray.png")
    Image.fromarray((gray * 65535).round().astype(np.uint16)).save(scans / "deep.png")
    Image.fromarray((gray * 255).round().astype(np.uint8)).save(scans / "sub" / "film.pgm")
    Image.fromarray(np.stack([gray * 255] * 3, axis=2).round().astype(np.uint8)).save(scans / "photo.jpg")
    write_dicom(scans / "sub" / "scan.dcm", mammogram_like(90, 70, 1) * 4095, spacing=(0.1, 0.05))
    write_dicom(scans / "plain.dcm", mammogram_like(40, 50, 2) * 4095, spacing=None)
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    out = tmp_path / "out"
    exit_code = run("--checkpoint", checkpoints["unet"], "--input", scans, "--output", out,
                    "--json", tmp_path / "p.json")
    assert exit_code == 1  # one file failed, the others were written
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if "broken.png" in line] == [
        line for line in captured.err.splitlines() if line.startswith("FAILED")]
    assert len(captured.err.splitlines()) == 1
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


def test_input_discovery_keeps_outputs_apart_and_away_from_the_inputs(tmp_path, monkeypatch):
    scans, out = tmp_path / "scans", tmp_path / "out"
    for folder in ("a", "b"):
        (scans / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(scans / folder / "scan.png")
    write_dicom(scans / "a" / "scan.dcm", mammogram_like(20, 20, 0) * 4095, spacing=None)
    write_dicom(scans / "b" / "IM000001", mammogram_like(20, 20, 0) * 4095, spacing=None)  # a PACS export's name
    write_dicom(scans / "b" / "1.2.840.1.3", mammogram_like(20, 20, 0) * 4095, spacing=None)  # named by its UID
    write_dicom(scans / "b" / "DICOMDIR", mammogram_like(20, 20, 0) * 4095, spacing=None)  # stands for the index
    (scans / "b" / "NOTES").write_text("not an image")
    # Files given one by one: same names from different folders never share an output.
    files = [scans / "a" / "scan.png", scans / "b" / "scan.png", scans / "a" / "scan.dcm", scans / "b" / "scan.png"]
    bases = [base.relative_to(out.resolve()) for _, base in inference.find_inputs(list(map(str, files)), out)]
    assert list(map(str, bases)) == ["scan_png", "scan_png_2", "scan_dcm", "scan_png_3"]
    # A folder: subfolders kept, DICOMs named otherwise found by their marker, the index and the text left alone.
    found = {str(file.relative_to(scans)): str(base.relative_to(out.resolve()))
             for file, base in inference.find_inputs([str(scans)], out)}
    assert found == {"a/scan.dcm": "a/scan_dcm", "a/scan.png": "a/scan_png", "b/IM000001": "b/IM000001",
                     "b/1.2.840.1.3": "b/1.2.840.1.3", "b/scan.png": "b/scan"}
    assert inference.read_image_file(scans / "b" / "IM000001")[1]  # read as a DICOM
    # Nothing is written beside an input: the output folder may not hold one.
    (scans / "a" / "scan_mask.png").write_bytes(b"the ground truth")
    with pytest.raises(DataError, match="holds the input"):
        inference.find_inputs([str(scans / "a" / "scan.png")], scans / "a")
    with pytest.raises(DataError, match="is the --output folder"):
        inference.find_inputs([str(scans / "b")], scans / "b")
    assert (scans / "a" / "scan_mask.png").read_bytes() == b"the ground truth"
    # An image too large to decode safely is a one-line DataError, not a crash of the whole run.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(DataError, match="scan.png: Image size"):
        inference.read_image_file(scans / "a" / "scan.png")


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
# User errors

def test_user_errors_are_one_line_with_exit_code_2(checkpoints, tmp_path, monkeypatch, capsys):
    # The script's __main__ block, run in this process (a new interpreter would import torch again).
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--checkpoint", str(tmp_path / "nope.pt"), "--dataset", "voc"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__")
    assert stop.value.code == 2
    message = f"{tmp_path / 'nope.pt'}: checkpoint not found (--checkpoint)"
    assert capsys.readouterr().err == f"evaluate.py: error: {message}\n"
    # A bad label found inside a DataLoader worker arrives wrapped in the worker's traceback: still one line.
    voc, ids = write_voc(tmp_path / "voc", [(40, 40), (40, 40)])
    Image.fromarray(np.full((40, 40), 30, np.uint8)).save(voc / "SegmentationClass" / f"{ids[1]}.png")
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--checkpoint", str(checkpoints["voc"]), "--dataset", "voc",
                                      "--data-root", str(tmp_path / "voc"), "--workers", "1", "--batch-size", "1"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__")
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"evaluate.py: error: {voc / 'SegmentationClass' / ids[1]}.png: label values "
                                       "[30] are not classes 0-20 or 255 (ignore)\n")
    unet, voc, empty = checkpoints["unet"], checkpoints["voc"], tmp_path / "empty"
    empty.mkdir()
    for argv, message in (
            (["--checkpoint", unet, "--dataset", "synthetic", "--image-size", 48], "multiple of 32"),
            (["--checkpoint", unet, "--dataset", "synthetic", "--input", tmp_path], "--dataset"),
            (["--checkpoint", unet, "--input", tmp_path], "--output"),
            (["--checkpoint", unet, voc, "--dataset", "synthetic"], "different numbers of classes"),
            (["--checkpoint", voc, "--dataset", "synthetic", "--limit", 2], "needs 1"),
            (["--checkpoint", unet, "--input", empty, "--output", tmp_path / "o"], "no .dcm"),
    ):
        with pytest.raises(UsageError, match=message):
            run(*argv)
    other = save_checkpoint(tmp_path / "other.pt", checkpoints["models"]["unet"], args=dict(image_size=96))
    with pytest.raises(UsageError, match="different image sizes"):
        run("--checkpoint", unet, other, "--dataset", "synthetic")
