"""Whole mammograms at high resolution: training patches (readers/patches.py, data.py) and
sliding-window prediction (engine/windows.py, inference.py) through train.py, evaluate.py and
predict.py, and full-field 4500 x 3500 DICOMs (uncompressed, RLE Lossless) within a memory bound."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn as nn
from PIL import Image

import evaluate
import predict
import train
from data import build_dataset, prepare_datasets
from engine.inference import model_logits, sliding_window_logits
from engine.windows import sliding_window, window_starts
from helpers import save_checkpoint, write_dicom
from model import build_model
from readers.patches import crop_patch, patch_origin
from readers.sampling import SeededItems

ROOT = Path(__file__).resolve().parents[1]
SMALL = (16, 16, 16, 16, 16)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def conv_net(seed: int = 0) -> nn.Module:
    """Two 3x3 convolutions: a window's rim sees its zero padding, so windows disagree there."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(4, 2, 3, padding=1)).eval()


# --------------------------------------------------------------------------------------------------
# Sliding windows

def test_a_window_covering_the_image_is_the_plain_forward_pass():
    torch.manual_seed(0)
    model = build_model("resnet34", "unet", num_classes=1, in_channels=1, decoder_channels=SMALL)
    model, images = model.eval(), torch.rand(2, 1, 64, 64)
    for tta in (False, True):
        plain = model_logits(model, images, tta=tta)
        for window in ((64, 64), (96, 128), None):
            assert torch.equal(sliding_window_logits(model, images, window, tta=tta), plain)
    assert not torch.allclose(sliding_window_logits(model, images, (32, 32)), plain)


@torch.no_grad()
def test_stitching_is_an_explicit_gaussian_blend_in_batches_of_at_most_batch_size():
    net, images, batches = conv_net(), torch.rand(2, 1, 70, 90), []
    assert window_starts(70, 32, 0.5) == [0, 16, 32, 38]
    assert window_starts(90, 48, 0.5) == [0, 24, 42]
    assert window_starts(1024, 320, 0.9)[:3] == [0, 32, 64]  # 320 x (1 - 0.9) is 31.99... in floats

    def forward(crops):
        batches.append(len(crops))
        return net(crops)

    got = sliding_window(forward, images, (32, 48), overlap=0.5, batch_size=5)
    # The reference: each window alone, in float64, its own Gaussian (sigma = side / 8, floor 1e-3).
    rows, cols = (np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in (32, 48))
    gauss = np.maximum(rows[:, None] * cols[None, :], 1e-3)
    total, weights = np.zeros((2, 2, 70, 90)), np.zeros((70, 90))
    for top in (0, 16, 32, 38):
        for left in (0, 24, 42):
            window = (..., slice(top, top + 32), slice(left, left + 48))
            total[window] += net(images[window]).double().numpy() * gauss
            weights[window[1:]] += gauss
    assert np.abs(got.numpy() - total / weights).max() < 1e-5
    assert max(batches) <= 5 and sum(batches) == 2 * 12  # two images of 4 x 3 windows, 5 at a time
    pointwise = nn.Conv2d(1, 2, 1).eval()  # each window gives a pixel the same logit: no change
    assert torch.allclose(sliding_window(pointwise, images, (32, 48)), pointwise(images), atol=1e-6)


@torch.no_grad()
def test_stitching_is_the_same_wherever_the_window_grid_starts():
    """16 rows more on top (one stride of 32-pixel windows at overlap 0.5) add one window row: the
    pixels below its reach keep their logits; the rows it reaches change, so the test can fail."""
    net, image = conv_net(), torch.rand(1, 1, 96, 80)
    shifted = torch.cat([torch.rand(1, 1, 16, 80), image], dim=2)  # (1, 1, 112, 80)
    plain = sliding_window(net, image, 32, overlap=0.5, batch_size=3)
    moved = sliding_window(net, shifted, 32, overlap=0.5, batch_size=7)[..., 16:, :]
    assert torch.allclose(plain[..., 16:, :], moved[..., 16:, :], atol=1e-6, rtol=0)
    assert not torch.allclose(plain[..., :16, :], moved[..., :16, :], atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Training patches

def test_lesion_centred_patches_hit_a_lesion_in_the_share_they_promise():
    breast, lesion = np.zeros((256, 256), bool), np.zeros((256, 256), bool)
    breast[:, :160] = True  # the breast on the left, as preprocessing orients it
    lesion[200:203, 120:123] = True  # 3 x 3 pixels: a patch anywhere in the breast rarely holds it

    def origins(share, lesion):
        return [patch_origin(breast, lesion, (32, 32), share, np.random.default_rng(seed))
                for seed in range(600)]

    def hit_rate(corners):
        return np.mean([lesion[top:top + 32, left:left + 32].any() for top, left in corners])

    assert hit_rate(origins(1.0, lesion)) == 1  # every lesion-centred patch holds its lesion pixel
    assert 0.28 < hit_rate(origins(1 / 3, lesion)) < 0.42  # a third, and the rare chance hit
    assert hit_rate(origins(0.0, lesion)) < 0.05
    normal = origins(1.0, np.zeros_like(lesion))  # no lesion: always in the breast
    assert all(breast[top:top + 32, left:left + 32].any() and 0 <= top <= 224 and 0 <= left <= 224
               for top, left in normal)
    assert max(left for _, left in normal) > 120  # the whole breast, not one corner of it
    # a K-class mask's ignored pixels (255; here all around the breast) are no lesion to centre a patch on
    mask = np.where(breast, 0, 255).astype(np.uint8)
    mask[lesion] = 1
    masks = [crop_patch(breast.astype(np.float32), mask, (32, 32), 1.0, np.random.default_rng(seed), level=0.5)[1]
             for seed in range(100)]
    assert all((patch == 1).any() for patch in masks)


def write_folder(root: Path, count: int = 4) -> Path:
    """`count` 96 x 96 gray mammogram-like PNGs with a round lesion each, all in the train split."""
    (root / "images").mkdir(parents=True), (root / "masks").mkdir()
    rows, cols = np.ogrid[:96, :96]
    for i in range(count):
        lesion = (rows - 30 - 8 * i) ** 2 + (cols - 20 - 4 * i) ** 2 <= 36
        noise = np.random.default_rng(i).integers(0, 20, (96, 96))
        image = np.where(cols < 70, 120, 5) + 80 * lesion + noise
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"a{i}.png")
        Image.fromarray(lesion.astype(np.uint8) * 255).save(root / "masks" / f"a{i}.png")
    rows = "".join(f"a{i}.png,train\n" for i in range(count))
    (root / "split.csv").write_text("file,split\n" + rows)
    return root


def test_patches_come_from_the_cache_and_a_whole_image_patch_is_todays_item(tmp_path, monkeypatch):
    root, cache = write_folder(tmp_path / "mine"), tmp_path / "cache"
    for name, where in (("folder", root), ("synthetic", None)):  # patch = image: today's items
        options = dict(in_channels=1, verbose=False, seed=3, limit=4)
        options.update(cache_dir=cache) if where else options.update(num_images=4)
        today = SeededItems(build_dataset(name, where, "train", 64, **options), 3)
        whole = SeededItems(build_dataset(name, where, "train", 64, patch_size=64, **options), 3)
        for i in range(4):
            assert all(map(torch.equal, today[(1, i)], whole[(1, i)]))  # bit for bit
    patched = build_dataset("folder", root, "train", 64, in_channels=1, verbose=False, seed=3,
                            cache_dir=cache, patch_size=32, lesion_patches=1.0, augment=False)
    prepare_datasets([patched], 0)
    first = [SeededItems(patched, 3)[(1, i)] for i in range(len(patched))]
    monkeypatch.setattr(patched, "load", lambda *a: pytest.fail("decoded instead of cropping"))
    again = [SeededItems(patched, 3)[(1, i)] for i in range(len(patched))]
    assert all(image.shape == (1, 32, 32) and mask.any() for image, mask in again)  # on a lesion
    assert all(torch.equal(a, b) for one, other in zip(first, again) for a, b in zip(one, other))
    synthetic = build_dataset("synthetic", None, "train", 64, patch_size=32, num_images=3)
    assert SeededItems(synthetic, 0)[(0, 0)][0].shape == (3, 32, 32)


# --------------------------------------------------------------------------------------------------
# The commands

def test_train_on_patches_then_evaluate_and_predict_by_the_checkpoints_windows(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.cli(["--image-size", "64", "--patch-size", "32", "--limit", "3", "--epochs", "1",
                      "--batch-size", "3", "--decoder-channels", "16,16,16,16,16", "--panels", "1",
                      "--workers", "0", "--out-dir", str(out)]) == 0
    saved = torch.load(out / "last.pt", weights_only=True)
    assert (saved["args"]["patch_size"], saved["args"]["overlap"]) == (32, 0.5)  # for the others
    validated = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    assert evaluate.main(evaluate.get_args_parser().parse_args([
        "--checkpoint", str(out / "last.pt"), "--dataset", "synthetic", "--limit", "3",
        "--workers", "0", "--timing-runs", "0", "--json", str(tmp_path / "eval.json")])) == 0
    assert "by 9 windows of 32x32 (overlap 0.5)" in capsys.readouterr().out  # the checkpoint's
    scored = json.loads((tmp_path / "eval.json").read_text())["models"][0]
    assert scored["window"] == [32, 32]
    assert scored["metrics"]["dice_mean_per_image"] == pytest.approx(
        validated["val_dice_mean_per_image"])  # train.py's validation was windowed too
    scan = tmp_path / "scan.png"
    Image.fromarray((np.random.default_rng(0).random((90, 70)) * 255).astype(np.uint8)).save(scan)
    run = ["--checkpoint", str(out / "last.pt"), "--input", str(scan), "--output",
           str(tmp_path / "masks"), "--backend", "eager"]
    assert predict.main(predict.get_args_parser().parse_args(run)) == 0
    assert "input 64x64 by 32x32 windows (overlap 0.5)" in capsys.readouterr().out
    assert predict.main(predict.get_args_parser().parse_args([*run, "--save", "mask",
                                                              "--overwrite"])) == 0
    assert [path.name for path in (tmp_path / "masks").iterdir()] == ["scan_mask.png"]  # no stale


MEMORY_PROBE = """
import resource, sys, torch
torch.set_num_threads(1)
import predict
checkpoint, out, warm, *scans = sys.argv[1:]
flags = ["--checkpoint", checkpoint, "--save", "mask", "--backend", "eager", "--output"]
predict.main(predict.get_args_parser().parse_args([*flags, out + "-warm", "--input", warm]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = predict.main(predict.get_args_parser().parse_args([*flags, out, "--input", *scans]))
print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, code)
"""


def test_a_full_field_dicom_predicts_within_a_memory_bound(tmp_path, checkpoints):
    """4500 x 3500 16-bit scans, uncompressed and RLE Lossless (pydicom's codec), by 9 windows each:
    the peak RSS of a fresh process grows by less than six times the image as read (float32)."""
    height, width = 4500, 3500
    rows, cols = np.ogrid[:71, :55]  # a breast in 64 x 64 blocks: long runs, RLE encodes it fast
    breast = ((rows - 35) / 32) ** 2 + (cols / 33) ** 2 < 1
    blocks = np.where(breast, 20000 + rows * 40 + cols * 20, 0)
    pixels = blocks.astype(np.uint16).repeat(64, axis=0).repeat(64, axis=1)[:height, :width]
    plain = write_dicom(tmp_path / "full.dcm", pixels)
    rle = pydicom.dcmread(plain)
    rle.compress(pydicom.uid.RLELossless, pixels)
    rle.save_as(tmp_path / "rle.dcm")
    Image.fromarray((blocks * 255 // blocks.max()).astype(np.uint8)).save(tmp_path / "small.png")
    checkpoint = save_checkpoint(tmp_path / "patches.pt", checkpoints["models"]["unet"],
                                 args=dict(image_size=128, patch_size=64, dataset="mias"))
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, checkpoint, tmp_path / "out",
                           tmp_path / "small.png", plain, tmp_path / "rle.dcm"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    growth_kb, code = done.stdout.split("GROWTH_KB")[1].split()
    assert code == "0" and "by 64x64 windows" in done.stdout
    assert int(growth_kb) * 1024 < 6 * height * width * 4, done.stdout
    masks = [np.asarray(Image.open(tmp_path / "out" / f"{n}_mask.png")) for n in ("full", "rle")]
    assert masks[0].shape == (height, width) and np.array_equal(masks[0], masks[1])
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["full_mask.png",
                                                                          "rle_mask.png"]
