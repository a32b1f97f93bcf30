"""evaluate.py as a command: metrics on synthetic data and a fake VOC tree (checked against the metric functions run
directly on the same predictions), the comparison table, panels and the one-line errors. Prediction on files
(evaluate.py --input, predict.py) is tested in test_predict.py. Models are small (narrow decoders, 64x64)."""
import argparse
import json
import math
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

import evaluate
from engine import charts, panels
from engine.checkpoints import CheckpointError, load_checkpoint
from data import build_dataset
from metrics import BinaryStats, ConfusionMatrix, LesionStats, predict_labels
from model import build_model
from engine.panels import write_panel
from helpers import save_checkpoint
from engine.cli import UsageError
from engine.measure import count_flops

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


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


def test_mask_outline_is_the_rim_of_a_region_at_any_thickness():
    def rim(top, left, bottom, right, shape=(96, 100)):  # (H, W) Chebyshev distance of a rectangle's pixels to outside
        rows, cols = np.ogrid[:shape[0], :shape[1]]
        inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
        distance = np.minimum(np.minimum(rows - top, bottom - 1 - rows), np.minimum(cols - left, right - 1 - cols)) + 1
        return inside.astype(np.uint8), np.where(inside, distance, 0)

    labels, distance = rim(8, 16, 72, 88)  # on the blocks of 8: the rim is exactly 8 pixels deep
    assert np.array_equal(panels.mask_outline(labels, 1), distance == 1)
    assert np.array_equal(panels.mask_outline(labels, 8), (distance >= 1) & (distance <= 8))
    labels, distance = rim(5, 11, 70, 83)  # across blocks, the top one in the image's first row of blocks
    for thickness in (2, 3, 8):
        outline = panels.mask_outline(labels, thickness)
        assert not outline[(distance == 0) | (distance > 2 * thickness)].any()  # inside, and no deeper than 2 blocks
        near = np.zeros_like(outline)  # pixels within `thickness` of the outline (Chebyshev): every rim pixel is
        padded = np.pad(outline, thickness)
        for dy in range(2 * thickness + 1):
            for dx in range(2 * thickness + 1):
                near |= padded[dy:dy + outline.shape[0], dx:dx + outline.shape[1]]
        assert near[distance == 1].all()
    speck = np.zeros((96, 100), np.uint8)
    speck[40:42, 50:52], speck[:4] = 1, 255  # a lesion smaller than a block still shows; ignored pixels never
    assert panels.mask_outline(speck, 8)[40:42, 50:52].all() and not panels.mask_outline(speck, 8)[:4].any()


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
    torch.save(dict(wrong, model_config=["resnet34", "fusion"]), tmp_path / "listed.pt")
    torch.save(dict(wrong, args=argparse.Namespace(epochs=1)), tmp_path / "pickled.pt")  # an object, not a number
    torch.save(dict(wrong, model=torch.zeros(3)), tmp_path / "tensor.pt")  # weights, but not by name
    for name, message in (("missing.pt", "not found"), ("garbage.pt", "cannot open"), ("bare.pt", "model_config"),
                          ("wrong.pt", "do not fit"), ("listed.pt", "model_config is a list, not the dict"),
                          ("tensor.pt", "its model is a Tensor, not the dict of weights"),
                          ("pickled.pt", "GLOBAL argparse.Namespace.*never loaded")):
        with pytest.raises(CheckpointError, match=message) as error:
            load_checkpoint(tmp_path / name)
        assert name in str(error.value) and "weights_only=False" not in str(error.value)  # never advised


# ---------------------------------------------------------------------------------------------------------------------
# Metrics, comparison and panels on a dataset

def reference_binary(model, limit: int, batch_size: int) -> tuple[dict, torch.Tensor, dict]:
    """The metric functions run directly: data.py normalises, the model predicts, BinaryStats and
    LesionStats count -> (summary, per-image Dice, FROC)."""
    dataset = build_dataset("synthetic", None, "val", 64, in_channels=1, mean=model.config["mean"],
                            std=model.config["std"], augment=False, limit=limit)
    stats, lesions = BinaryStats(), LesionStats()
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            logits = model(x)
            stats.update(predict_labels(logits), y)
            lesions.update(logits, y)
    return {**stats.summary(), **lesions.summary()}, stats.per_image()[0], lesions.froc()


def test_synthetic_metrics_table_disagreements_and_panels(checkpoints, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert run("--checkpoint", checkpoints["unet"], checkpoints["fusion"], "--dataset", "synthetic", "--limit", 8,
               "--batch-size", 3, "--workers", 0, "--timing-runs", 1, "--json", out,
               "--panels", tmp_path / "panels", "--froc", tmp_path / "froc.png") == 0
    printed, result = capsys.readouterr().out, json.loads(out.read_text())
    assert result["images"] == 8 and result["image_size"] == [64, 64]  # the size recorded in the checkpoints
    dice = {}
    for row in result["models"]:
        model = checkpoints["models"][row["name"]]
        summary, dice[row["name"]], froc = reference_binary(model, 8, 3)
        assert all(floats_equal(row["metrics"][key], value) for key, value in summary.items()), row["name"]
        assert row["froc"] == froc and summary["false_positive_marks"] > 0  # untrained: marks
        assert (f"lesions found {int(summary['lesions_found'])} of {int(summary['lesions'])} "
                f"({100 * summary['lesion_sensitivity']:.2f}%); false positives "
                f"{summary['false_positives_per_image']:.2f} per image, "
                f"{summary['false_positives_per_normal_image']:.2f} per normal image") in printed
        name = f"{row['name']}: resnet34"
        rows = [line for line in printed.splitlines() if line.startswith(name)]
        columns = [("lesion_sensitivity", 100), ("false_positives_per_image", 1),
                   ("false_positives_per_normal_image", 1),
                   *((f"lesion_sensitivity_at_{x}_fp_per_image", 100) for x in ("0.5", "1", "2"))]
        assert rows[1].split()[4:10] == [f"{scale * summary[key]:.2f}" for key, scale in columns]
        assert [row["per_image_dice"][i] for i in sorted(row["per_image_dice"])] == dice[row["name"]].tolist()
        for label, key in (("IoU  pooled", "iou_pooled"), ("Dice pooled", "dice_pooled"),
                           ("sensitivity", "sensitivity")):
            assert f"{label} {100 * summary[key]:.2f}%" in printed
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["flops"] == count_flops(model, (1, 1, 64, 64)) and row["thesis_flops_g"] == row["flops"] / 4 / 1e9
        table_row = next(line for line in printed.splitlines() if line.startswith(f"{row['name']}: resnet34"))
        # The thesis' Tables 2-3 columns are means over images, here over those with a lesion (some synthetic images
        # have none); the mean over all images and the pooled values follow, named in the header
        assert 0 < summary["images_with_lesion"] < 8
        assert table_row.split()[4:9] == [f"{100 * summary[key]:.2f}" for key in (
            "iou_mean_lesion_images", "dice_mean_lesion_images", "dice_mean_per_image", "iou_pooled", "dice_pooled")]
        assert f"over the {int(summary['images_with_lesion'])} images with a lesion" in printed
        assert f"{row['params'] / 1e6:.2f} M" in table_row and row["inference_s"] > 0
    assert result["models"][0]["epoch"] == 7
    headers = [re.split(r"\s{2,}", line.strip()) for line in printed.splitlines()
               if line.startswith("Architecture")]
    assert headers == [["Architecture", "IoU, lesion images (%)", "Dice, lesion images (%)",
                        "Dice, all images (%)", "IoU pooled (%)", "Dice pooled (%)", "#Params",
                        "FLOPS", "Inference time (s)"],
                       ["Architecture", "lesions found (%)", "FP / image", "FP / normal image",
                        "found at 0.5 FP / image (%)", "found at 1 FP / image (%)",
                        "found at 2 FP / image (%)"]]
    assert result["froc_figure"] == str(tmp_path / "froc.png")
    with Image.open(tmp_path / "froc.png") as froc_figure:
        assert froc_figure.format == "PNG"
        assert froc_figure.size == (charts.FROC_WIDTH, charts.FROC_HEIGHT)

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


def test_a_voc_model_of_patches_is_scored_by_its_windows_as_its_header_says(checkpoints, tmp_path):
    """A VOC checkpoint trained on patches, evaluated at a larger size, is scored window by window, as the report's
    header, FLOPs and timing count it: the network sees its patch size, never the whole image."""
    voc, _ = write_voc(tmp_path / "voc", [(45, 60), (70, 33)])
    model = checkpoints["models"]["voc"]
    dataset = build_dataset("voc", tmp_path / "voc", "val", 64, mean=model.config["mean"], std=model.config["std"],
                            augment=False, verbose=False)
    seen = []
    hook = model.register_forward_pre_hook(lambda _, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    labels = [voc / "SegmentationClass" / f"{name}.png" for name in dataset.ids]
    candidate = evaluate.Candidate("voc.pt", "voc", model, {}, runner=model, window=(32, 32))
    try:
        evaluate.evaluate_dataset([candidate], dataset, labels, batch_size=2, workers=0, tta=False, amp="none")
    finally:
        hook.remove()  # the model is shared with other tests
    assert seen and set(seen) == {(32, 32)}


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
# User errors

def test_a_folder_of_class_index_masks_is_scored_by_miou_per_image(tmp_path, capsys):
    """A K-class model of one's own mammograms (--dataset folder --num-classes 3): mIoU over the set and per image at
    the input size, checked against ConfusionMatrix run directly, panels drawn, and the inputs prepared as mammograms
    (the same dataset items the metric functions see)."""
    root, rng = tmp_path / "mine", np.random.default_rng(3)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for index in range(4):
        image = (rng.uniform(0.1, 0.5, (48, 40)) * 255).astype(np.uint8)
        mask = np.zeros((48, 40), np.uint8)
        mask[8 + index:20 + index, 6:18], mask[30:40, 20 + index:30] = 1, 2  # class indices 0..2
        Image.fromarray(image).save(root / "images" / f"case{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{index}.png")
    (root / "split.csv").write_text("file,split\ncase0.png,train\ncase1.png,val\ncase2.png,val\ncase3.png,val\n")
    torch.manual_seed(1)
    model = build_model("resnet34", "unet", num_classes=3, in_channels=1, decoder_channels=(16, 8, 8, 8, 8))
    checkpoint = save_checkpoint(tmp_path / "classes.pt", model, args=dict(image_size=64, dataset="folder"))
    out = tmp_path / "metrics.json"
    assert run("--checkpoint", checkpoint, "--dataset", "folder", "--data-root", root, "--workers", 0,
               "--timing-runs", 0, "--json", out, "--panels", tmp_path / "panels",
               "--cache-dir", tmp_path / "cache") == 0
    printed, (row,) = capsys.readouterr().out, json.loads(out.read_text())["models"]
    dataset = build_dataset("folder", root, "val", 64, in_channels=1, num_classes=3, augment=False,
                            cache_dir=tmp_path / "cache", mean=model.config["mean"], std=model.config["std"])
    whole, per_image = ConfusionMatrix(3), []
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=3):
            labels = predict_labels(model.eval()(x))
            whole.update(labels, y)
            for pred, target in zip(labels, y):
                single = ConfusionMatrix(3)
                single.update(pred[None], target[None])
                per_image.append(single.mean_iou())
    assert row["metrics"]["mean_iou"] == whole.mean_iou()
    assert [row["per_image_miou"][i] for i in dataset.ids] == per_image
    assert "mIoU at the input size" in printed and len(list((tmp_path / "panels").glob("*.png"))) >= 1


def test_user_errors_are_one_line_with_exit_code_2(checkpoints, tmp_path, monkeypatch, capsys):
    # The script's __main__ block, run in this process (a new interpreter would import torch again).
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--checkpoint", str(tmp_path / "nope.pt"), "--dataset", "voc"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__")
    assert stop.value.code == 2
    message = f"{tmp_path / 'nope.pt'}: checkpoint not found (--checkpoint)"
    assert capsys.readouterr().err == f"evaluate.py: error: {message}\n"
    unet, voc, empty = checkpoints["unet"], checkpoints["voc"], tmp_path / "empty"
    empty.mkdir()
    for argv, message in (
            (["--checkpoint", unet, "--dataset", "synthetic", "--image-size", 48], "multiple of 32"),
            (["--checkpoint", unet, "--dataset", "synthetic", "--input", tmp_path], "--dataset"),
            (["--checkpoint", unet, "--input", tmp_path], "--output"),
            (["--checkpoint", unet, voc, "--dataset", "synthetic"], "different numbers of classes"),
            (["--checkpoint", voc, "--dataset", "synthetic", "--limit", 2], "needs 1"),
            (["--checkpoint", voc, "--dataset", "voc", "--froc", "f.png"], "binary .*21 classes"),
            (["--checkpoint", unet, "--input", tmp_path, "--output", "o", "--froc", "f.png"],
             "--froc goes with --dataset"),
            (["--checkpoint", *[unet] * 7, "--dataset", "synthetic", "--froc", "f.png"], "at most 6"),
            (["--checkpoint", unet, "--input", empty, "--output", tmp_path / "o"], "no .dcm"),
            (["--checkpoint", unet, "--dataset", "synthetic", "--panels", unet / "p"], "--panels .* is a file"),
    ):
        with pytest.raises(UsageError, match=message):
            run(*argv)
    other = save_checkpoint(tmp_path / "other.pt", checkpoints["models"]["unet"], args=dict(image_size=96))
    with pytest.raises(UsageError, match="different image sizes"):
        run("--checkpoint", unet, other, "--dataset", "synthetic")


@pytest.mark.slow  # a DataLoader worker that failed takes torch 5 s to shut down
def test_a_bad_label_found_in_a_worker_is_one_line_with_exit_code_2(checkpoints, tmp_path, monkeypatch, capsys):
    """A bad label found inside a DataLoader worker arrives wrapped in the worker's traceback: still one line."""
    voc, ids = write_voc(tmp_path / "voc", [(40, 40), (40, 40)])
    Image.fromarray(np.full((40, 40), 30, np.uint8)).save(voc / "SegmentationClass" / f"{ids[1]}.png")
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--checkpoint", str(checkpoints["voc"]), "--dataset", "voc",
                                      "--data-root", str(tmp_path / "voc"), "--workers", "1", "--batch-size", "1"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__")
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"evaluate.py: error: {voc / 'SegmentationClass' / ids[1]}.png: label values "
                                       "[30] are not classes 0-20 or 255 (ignore)\n")
