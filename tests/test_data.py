"""data.py: mini-MIAS (the real files in ../shared/data), synthetic mammograms, a fake Pascal VOC tree, mammogram
preprocessing, paired augmentation, normalisation and the build_dataset contract. CBIS-DDSM is tested in
test_data_cbis.py, read_dicom in test_dicom.py."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

import data
from helpers import listing, write_toy_mias
from readers import mammograms
from readers import mias as mias_lib
import train
from data import DataError, build_dataset
from readers.sampling import EpochSampler, SeededItems
from losses import build_loss
from metrics import all_background_scores
from model import build_model
from engine.cli import Progress, StopRequests

def _info_lines(mias: Path) -> list[list[str]]:
    return [line.split() for line in (mias / "Info.txt").read_text().splitlines() if line.startswith("mdb")]


def _local_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean inside the mask minus the mean of a ring around it (the mask's bounding box grown by its size)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    grow_r, grow_c = max(2, rows[-1] - rows[0]), max(2, cols[-1] - cols[0])
    ring = np.zeros_like(mask, bool)
    ring[max(0, rows[0] - grow_r):rows[-1] + grow_r + 1, max(0, cols[0] - grow_c):cols[-1] + grow_c + 1] = True
    ring &= ~mask.astype(bool)
    return float(image[mask.astype(bool)].mean() - image[ring].mean())


# ---------------------------------------------------------------------------------------------------------------------
# mini-MIAS (real files)

@pytest.fixture(scope="module")
def mias_cache(tmp_path_factory):
    """One cache for the module: each real image is decoded once, whatever the test."""
    return tmp_path_factory.mktemp("mias-cache")


def _mias(root, split, cache, **options):
    options = dict(cache_dir=cache, verbose=False, augment=False, in_channels=1) | options
    return build_dataset("mias", root, split, 128, **options)


def test_mias_uses_the_outlines_keeps_normals_and_splits_by_patient(mias, mias_cache, capsys):
    splits = {split: _mias(mias, split, mias_cache, verbose=True) for split in ("train", "val", "test")}
    printed = capsys.readouterr().out
    info = _info_lines(mias)
    masses = {f[0] for f in info if f[2] in ("CIRC", "SPIC", "MISC")}
    normals = {f[0] for f in info if f[2] == "NORM"} & {p.stem for p in (mias / "images").glob("*.png")}
    outlined = {p.stem for p in (mias / "masks").glob("mdb*.png")}
    ids = [i for dataset in splits.values() for i in dataset.ids]
    assert len(masses) == 56 and len(outlined) == 55 and len(normals) == 20
    assert sorted(ids) == sorted(masses - {"mdb059"} | normals)  # mdb059: no coordinates and no outline
    counts = [line for line in printed.splitlines() if line.startswith("mias ")]
    assert len(counts) == 3 and sum(int(line.split(" with outline masks")[0].split()[-1]) for line in counts) == 55
    assert all(" 0 with Info.txt's circles" in line for line in counts)
    patients = {split: {(int(i[3:]) + 1) // 2 for i in d.ids} for split, d in splits.items()}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"] or
                patients["val"] & patients["test"])
    assert 0.5 < len(splits["train"]) / len(ids) < 0.7 and len(splits["val"]) >= 8 and len(splits["test"]) >= 8
    assert _mias(mias, "val", mias_cache).ids == splits["val"].ids
    for dataset in splits.values():
        for index, ref in enumerate(dataset.ids):
            image, mask = dataset[index]
            assert (mask.sum() == 0) == (ref in normals)  # normal images stay in, without a lesion
            half = image.shape[-1] // 2  # oriented: the breast (the brighter half) is on the left
            assert image[..., :half].sum() > image[..., half:].sum()
    skipped = "".join(listing(mias_cache, "mias", s).read_text() for s in splits)
    assert "mdb059" in skipped and "no coordinates" in skipped


def test_mias_outline_is_the_mask_file_and_holds_the_info_txt_centre(mias, mias_cache):
    dataset = _mias(mias, "train", mias_cache, orient=False)
    index = next(i for i, ref in enumerate(dataset.ids) if (mias / "masks" / f"{ref}.png").is_file())
    ref = dataset.ids[index]
    outline = np.asarray(Image.open(mias / "masks" / f"{ref}.png")) > 127
    expected = mammograms.preprocess_mammogram(np.zeros(outline.shape, np.float32), [outline], (128, 128),
                                               orient=False)[1]
    assert np.array_equal(dataset[index][1].numpy(), expected)
    x, y = next((int(f[4]), int(f[5])) for f in _info_lines(mias) if f[0] == ref and len(f) >= 7)
    assert outline[1024 - y, x]  # Info.txt's centre, y counted from the bottom, lies inside the outline


def test_a_mias_outline_saved_as_0_1_is_the_same_mask_and_other_values_are_refused(tmp_path):
    """Outline tools save 0/255 or 0/1: both are the mass (0/1 once read as 0 and 1/255, an empty mask, silently)."""
    image = tmp_path / "mdb001.png"
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(image)
    outline = np.zeros((8, 8), np.uint8)
    outline[2:5, 3:6] = 1
    for scale in (1, 255):
        Image.fromarray(outline * scale).save(tmp_path / "mask.png")
        _, (mask,) = mias_lib.load_mias(mias_lib.MiasImage("mdb001", image, 1, ((4, 4, 2),), tmp_path / "mask.png"))
        assert np.array_equal(mask, outline > 0)
    Image.fromarray(outline * 128).save(tmp_path / "mask.png")
    with pytest.raises(DataError, match=r"mask.png: mask values \[0, 128\]; a binary mask holds 0/255 or 0/1"):
        mias_lib.load_mias(mias_lib.MiasImage("mdb001", image, 1, ((4, 4, 2),), tmp_path / "mask.png"))


def test_mias_without_outlines_falls_back_to_circles_counted_from_the_bottom(mias, tmp_path):
    root = tmp_path / "circles-only"  # Info.txt and the images, no masks/
    root.mkdir()
    (root / "Info.txt").write_bytes((mias / "Info.txt").read_bytes())
    (root / "images").symlink_to(mias / "images")
    dataset = _mias(root, "test", tmp_path / "cache", orient=False)  # the split drawn for mdb001
    first = dataset.ids.index("mdb001")  # CIRC at x=535, y=425 (from the bottom), radius 197
    image, mask = (t.numpy() for t in dataset[first])
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - (1024 - 425) / 8) < 2 and abs(cols.mean() - 535 / 8) < 2
    contrasts = [_local_contrast(*(t.numpy()[0] if t.ndim == 3 else t.numpy() for t in dataset[i]))
                 for i in range(len(dataset)) if dataset[i][1].sum() > 0]
    assert np.mean(np.array(contrasts) > 0) >= 0.9  # a mass is brighter than its surroundings
    # The same circles with the y axis read from the top mostly miss the masses.
    raw = np.asarray(Image.open(mias / "images" / "mdb002.png"), np.float32)
    rows, cols = np.ogrid[:1024, :1024]
    bottom = (rows - (1024 - 280)) ** 2 + (cols - 522) ** 2 <= 69 ** 2
    top = (rows - 280) ** 2 + (cols - 522) ** 2 <= 69 ** 2
    assert _local_contrast(raw, bottom) > 30 > _local_contrast(raw, top)


def test_an_unreadable_mias_image_is_skipped_with_its_reason_not_a_traceback(tmp_path):
    write_toy_mias(tmp_path / "mias")
    (tmp_path / "mias" / "images" / "mdb002.png").write_bytes(b"")  # a mass with circles only (no outline)
    skipped = mias_lib.read_mias(tmp_path / "mias")[1]
    reasons = [(ref, reason.split(" (")[0]) for _, _, ref, reason in skipped]
    assert reasons == [("mdb002", "unreadable image mdb002.png")]


def test_a_size_given_as_a_numpy_integer_and_each_fold_keep_their_own_cache_files(tmp_path):
    """np.int64(32) is the size 32, down to the cache entry's name; each fold of a cross-validation lists its skipped
    rows in a file of its own (folds run at once would overwrite one)."""
    write_toy_mias(tmp_path / "mias")
    names = [sorted(entry.cache_files) for entry in (
        data.build_dataset("mias", tmp_path / "mias", "train", size, cache_dir=tmp_path / "cache", verbose=False)
        for size in (32, np.int64(32)))]
    assert names[0] == names[1]
    for fold in range(2):
        data.build_dataset("mias", tmp_path / "mias", "train", 32, fold=fold, folds=2, cache_dir=tmp_path / "cache",
                           verbose=False)
    assert {path.name.split("_", 2)[-1] for path in (tmp_path / "cache").glob("skipped_mias-*")} == {
        "train.csv", "train-fold0of2.csv", "train-fold1of2.csv"}


def test_mias_cache_is_reused(mias, mias_cache, monkeypatch):
    first = _mias(mias, "val", mias_cache)[0]  # built (and cached) here, whichever tests ran before
    monkeypatch.setattr(data, "load_mias", lambda *args: pytest.fail("decoded although cached"))
    assert torch.equal(_mias(mias, "val", mias_cache)[0][1], first[1])


def test_mias_reads_16_bit_pgm_and_skips_what_it_cannot_use(tmp_path):
    root = tmp_path / "mias"
    root.mkdir()
    (root / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\n"  # usable
                                   "mdb003 G CIRC B 2000 425 50\n"  # centre outside the image
                                   "mdb005 G\n"  # malformed: no class
                                   "mdb007 G NORM\n")  # normal, image missing
    pixels = np.random.default_rng(0).integers(0, 4096, (1024, 1024), dtype=np.uint16)
    Image.fromarray(pixels).save(root / "mdb001.pgm")  # 16-bit, as some scanners' exports
    Image.fromarray((pixels >> 4).astype(np.uint8)).save(root / "mdb003.png")
    images, skipped, strata = mias_lib.read_mias(root)
    assert [(image.ref, image.path.name, image.circles) for image in images] == [("mdb001", "mdb001.pgm",
                                                                                  ((535, 425, 197),))]
    reasons = {ref: reason for _, _, ref, reason in skipped}
    assert "circle outside the image" in reasons["mdb003"] and "malformed line" in reasons["mdb005"]
    assert "image file missing" in reasons["mdb007"] and strata == {1: "mass", 2: "mass", 4: "other"}
    np.testing.assert_array_equal(mias_lib.read_gray(root / "mdb001.pgm"), pixels / np.float32(65535))
    with pytest.raises(DataError, match="Info.txt"):
        build_dataset("mias", tmp_path, "train", 64)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic mammograms

def test_synthetic_is_deterministic_and_sized():
    train = build_dataset("synthetic", None, "train", 64, augment=False)
    val = build_dataset("synthetic", None, "val", 64)
    assert (len(train), len(val), len(build_dataset("synthetic", None, "test", 64))) == (400, 64, 64)
    assert len(build_dataset("synthetic", None, "train", 64, num_images=10, limit=3)) == 3
    assert torch.equal(train[5][0], build_dataset("synthetic", None, "train", 64, augment=False)[5][0])
    assert not torch.equal(train[0][0], build_dataset("synthetic", None, "test", 64)[0][0])
    assert not torch.equal(train[0][0], build_dataset("synthetic", None, "train", 64, augment=False, seed=1)[0][0])
    # the images a run is scored on are the same whatever its seed: runs of several seeds compare
    for split in ("val", "test"):
        assert torch.equal(build_dataset("synthetic", None, split, 64, seed=1)[3][1],
                           build_dataset("synthetic", None, split, 64)[3][1])


def test_synthetic_masses_are_learnable_but_not_trivial():
    samples = [data.synthetic_mammogram((128, 128), np.random.default_rng([0, 0, i])) for i in range(120)]
    masks = [mask for _, mask in samples]
    areas = np.array([mask.sum() for mask in masks])
    assert 0.1 < np.mean(areas == 0) < 0.35  # some images have no mass
    assert np.percentile(areas[areas > 0], 90) > 6 * np.percentile(areas[areas > 0], 10)  # varied sizes
    assert all(image.min() >= 0 and image.max() <= 1 and image.dtype == np.float32 for image, _ in samples)
    # Contrast-stretched as real mammograms are, so prediction (which stretches every file) sees what training saw.
    assert all(np.percentile(image, 0.5) < 1e-3 and np.percentile(image, 99.5) > 0.999
               for image, _ in samples)
    # Learnable: masses are locally brighter than the tissue around them.
    contrasts = [_local_contrast(image, mask) for image, mask in samples if mask.any()]
    assert np.mean(np.array(contrasts) > 0.02) > 0.9
    # Not trivial: no single intensity threshold segments them.
    images, truth = np.stack([image for image, _ in samples]), np.stack(masks).astype(bool)
    best = max(2 * (truth & (images > t)).sum() / (truth.sum() + (images > t).sum()) for t in np.linspace(0, 1, 41))
    assert best < 0.5
    # Shapes differ: lobulated/spiculated outlines are less compact than round ones.
    compactness = [mask.sum() / (np.ptp(np.nonzero(mask)[0]) + 1) / (np.ptp(np.nonzero(mask)[1]) + 1)
                   for mask in masks if mask.sum() > 40]
    assert np.ptp(compactness) > 0.2
    # Visible at any size: at 32 x 32, where 2.5% of the side is under a pixel, a mass still covers ~3 px of radius
    small = [data.synthetic_mammogram((32, 32), np.random.default_rng([0, 0, i]))[1].sum() for i in range(100)]
    assert min(area for area in small if area > 0) >= 8


# ---------------------------------------------------------------------------------------------------------------------
# Pascal VOC 2012 (fake tree)

def _palette_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253  # 1 = aeroplane (128, 0, 0), 255 = void
    image.putpalette(palette[:768])
    image.save(path)


def write_voc(root: Path, *, sbd: bool = False) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "SegmentationClassAug"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"], "aug": ["2008_000001"]}
    for split, names in ids.items():
        for number, name in enumerate(names):
            height, width = (60, 90) if number == 0 else (80, 50)
            pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(voc / "JPEGImages" / f"{name}.jpg")
            labels = np.zeros((height, width), np.uint8)
            labels[10:30, 10:40] = 1 if split != "aug" else 15
            labels[30, :] = 255
            folder = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
            if split != "aug" or sbd:
                _palette_png(voc / folder / f"{name}.png", labels)
        if split != "aug":
            (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    if sbd:
        (voc / "ImageSets/Segmentation/trainaug.txt").write_text("2007_000032\n2007_000039\n2008_000001\n")
    return voc


def test_voc_reads_palette_indices_and_pads_with_ignore(tmp_path):
    write_voc(tmp_path)
    val = build_dataset("voc", tmp_path, "val", 64, verbose=False)
    assert val.num_classes == 21 and val.ids == ["2007_000033"] and not val.augment
    image, mask = val[0]
    assert image.shape == (3, 64, 64) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 1, 255}  # class indices, not the palette's colours (128, ...)
    # Evaluation fits the longer side (90 -> 64): rows below 60 * 64 / 90 = 43 are padding, ignored.
    assert (mask[44:] == 255).all() and (mask[:40, :] != 255).any()
    train = build_dataset("voc", tmp_path, "train", 48, verbose=False)
    for _ in range(5):
        image, mask = train[1]
        assert image.shape == (3, 48, 48) and set(mask.unique().tolist()) <= {0, 1, 255}


def test_voc_trainaug_and_errors(tmp_path):
    write_voc(tmp_path / "plain")
    with pytest.raises(DataError, match="SegmentationClassAug"):
        build_dataset("voc", tmp_path / "plain", "trainaug", 32)
    with pytest.raises(DataError, match="in_channels must be 3"):
        build_dataset("voc", tmp_path / "plain", "train", 32, in_channels=1, mean=(0.5,), std=(0.5,))
    voc = write_voc(tmp_path / "sbd", sbd=True)
    trainaug = build_dataset("voc", voc.parent.parent, "trainaug", 32, verbose=False, augment=False)
    assert trainaug.ids == ["2007_000032", "2007_000039", "2008_000001"]
    assert 15 in trainaug[2][1].unique().tolist()  # SBD's label for the id VOC has no label for
    (voc / "ImageSets/Segmentation/trainaug.txt").write_text("2007_000032\n2007_000033\n")
    with pytest.raises(DataError, match="2007_000033"):
        build_dataset("voc", voc, "trainaug", 32)  # a val image in the training list
    Image.fromarray(np.full((60, 90), 40, np.uint8), mode="L").save(voc / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(DataError, match="2007_000032.png"):
        trainaug[0]  # 40 is no class: a colour-rendered or corrupt label
    Image.new("RGB", (90, 60)).save(voc / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(DataError, match="palette"):
        trainaug[0]
    label = voc / "SegmentationClass" / "2007_000032.png"
    Image.fromarray(np.zeros((60, 90), np.uint8), mode="L").save(label)
    label.write_bytes(label.read_bytes()[:60])  # cut short: the file is named, not only Pillow's reason
    with pytest.raises(DataError, match="2007_000032.png: cannot read the label"):
        trainaug[0]


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing, augmentation, normalisation

def test_preprocess_keeps_small_lesions_orients_and_crops():
    image = np.zeros((2000, 1200), np.float32)
    image[200:1800, 600:] = 0.6  # a breast on the right half
    image[50:120, 50:200] = 1.0  # a bright label in the empty corner
    tiny = np.zeros(image.shape, bool)
    tiny[1000:1003, 900:903] = True  # 3 x 3 pixels: far below one output pixel (31 x 19 pixels)
    out, mask = data.preprocess_mammogram(image, [tiny], (64, 64))
    assert out.dtype == np.float32 and mask.dtype == np.uint8 and mask.sum() >= 1  # the lesion survives...
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - 32) <= 1 and abs(cols.mean() - (64 - 48)) <= 1  # ...mirrored with the breast
    assert out[:, :32].sum() > out[:, 32:].sum()
    cropped, crop_mask = data.preprocess_mammogram(image, [tiny], (64, 64), orient=False, crop_breast=True)
    rows, cols = np.nonzero(crop_mask)  # the crop drops the label and the empty half: the lesion sits mid-breast
    assert abs(rows.mean() - 64 * 800 / 1600) <= 2 and abs(cols.mean() - 64 * 300 / 600) <= 2
    square, _ = data.preprocess_mammogram(image, [tiny], (64, 64), keep_aspect=True)
    assert (square[:, 39:] == 0).all() and square[:, :38].max() > 0  # 1200 x 2000 keeps its 0.6 aspect ratio


def test_largest_component_matches_a_flood_fill():
    rng = np.random.default_rng(0)
    for _ in range(10):
        foreground = rng.random((40, 50)) > 0.45
        labels = np.zeros(foreground.shape, int)  # breadth-first flood fill, 8-connected
        for start in zip(*np.nonzero(foreground)):
            if labels[start]:
                continue
            labels[start] = labels.max() + 1
            queue = [start]
            while queue:
                r, c = queue.pop()
                for rr in range(max(0, r - 1), min(40, r + 2)):
                    for cc in range(max(0, c - 1), min(50, c + 2)):
                        if foreground[rr, cc] and not labels[rr, cc]:
                            labels[rr, cc] = labels[start]
                            queue.append((rr, cc))
        largest = mammograms._largest_component(foreground)
        sizes = np.bincount(labels.ravel())[1:]
        assert np.array_equal(largest, labels == labels[largest][0]) and largest.sum() == sizes.max()


def test_augmentation_moves_image_and_mask_together():
    image = np.full((64, 64), 0.1, np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 1
    image[mask == 1] = 0.9
    changed = 0
    for seed in range(10):
        out, out_mask = mammograms.augment_mammogram(image, mask, np.random.default_rng(seed), mirror=True)
        assert set(np.unique(out_mask)) <= {0, 1} and 0 <= out.min() and out.max() <= 1
        bright = out > (out.max() + out.min()) / 2
        assert (bright & (out_mask == 1)).sum() / (bright | (out_mask == 1)).sum() > 0.85
        changed += not np.array_equal(out_mask, mask)
        again, again_mask = mammograms.augment_mammogram(image, mask, np.random.default_rng(seed), mirror=True)
        assert np.array_equal(out, again) and np.array_equal(out_mask, again_mask)
    assert changed >= 8


def test_normalisation_channels_and_defaults(tmp_path):
    gray = build_dataset("synthetic", None, "val", 32, in_channels=1, mean=(0.5,), std=(0.25,))
    rgb = build_dataset("synthetic", None, "val", 32)  # ImageNet statistics, grayscale replicated
    raw, mask = data.synthetic_mammogram((32, 32), np.random.default_rng([0, 1, 0]))
    image, target = gray[0]
    assert torch.allclose(image[0], (torch.from_numpy(raw) - 0.5) / 0.25, atol=1e-6)
    assert torch.equal(target, torch.from_numpy(mask).long()) and gray.num_classes == 1
    image3 = rgb[0][0]
    assert torch.allclose(image3[2], (torch.from_numpy(raw) - 0.406) / 0.225, atol=1e-6)
    assert not gray.augment and build_dataset("synthetic", None, "train", 32).augment
    with pytest.raises(DataError, match="need 3 values"):
        build_dataset("synthetic", None, "val", 32, mean=(0.5,), std=(0.5,))


def test_build_dataset_errors_name_what_to_fix(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'inbreast'"):
        build_dataset("inbreast", tmp_path, "train", 64)
    with pytest.raises(DataError, match="unknown split 'trainaug'"):
        build_dataset("mias", tmp_path, "trainaug", 64)
    with pytest.raises(DataError, match="data root is required"):
        build_dataset("voc", None, "train", 64)
    with pytest.raises(DataError, match="no data root"):
        build_dataset("synthetic", tmp_path, "train", 64)
    with pytest.raises(DataError, match="image_size"):
        build_dataset("synthetic", None, "train", (64, 64, 3))
    assert build_dataset("synthetic", None, "val", (32, 48))[0][1].shape == (32, 48)


def test_synthetic_loads_with_two_workers():
    dataset = build_dataset("synthetic", None, "train", 32, num_images=8)
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2))
    assert [tuple(images.shape) for images, _ in batches] == [(4, 3, 32, 32)] * 2


def ring_contrast(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean intensity inside a mass minus that of a 4-pixel ring around it: masses are denser than the
    tissue around them, so an outline on its mass scores well above zero, one moved off it near zero."""
    inside = mask.float()[None, None]
    ring = (F.max_pool2d(inside, 9, 1, 4) - inside)[0, 0] > 0
    return float(image[0][mask > 0].mean() - image[0][ring].mean())


@pytest.mark.slow
def test_real_outlines_reach_the_loss_aligned_and_a_short_run_learns_them(mias, tmp_path, one_thread):
    """What the pipeline guarantees on real mini-MIAS masses, on any machine: every outline, as a training
    item holds it, lies on its mass (mean contrast 0.83 here; mirrored 0.16, shifted 8 pixels 0.20); and 20
    epochs on 8 of them lower the loss and beat predicting all background (Dice 0) by a wide margin (seeds
    and CPUs give pooled Dice 0.35-0.81 here). Generalisation is the cross-validation's question."""
    torch.manual_seed(0)
    model = build_model("resnet34", "unet", num_classes=1, in_channels=1, decoder_channels=(32, 32, 16, 16, 16))
    splits = [build_dataset("mias", mias, split, 64, in_channels=1, mean=model.config["mean"],
                            std=model.config["std"], include_normals=False, augment=False, verbose=False,
                            cache_dir=tmp_path / "cache") for split in ("train", "val", "test")]
    masses = torch.utils.data.ConcatDataset(splits)  # all 55, whichever split holds each
    contrast = [ring_contrast(*masses[i]) for i in range(len(masses))]
    assert len(contrast) == 55 and min(contrast) > 0 and np.mean(contrast) > 0.5, contrast
    ids = [image_id for split in splits for image_id in split.ids]  # the 8 the thresholds below were set on
    chosen = ["mdb001", "mdb002", "mdb005", "mdb010", "mdb012", "mdb013", "mdb017", "mdb021"]
    images = torch.utils.data.Subset(masses, [ids.index(image_id) for image_id in chosen])
    loader = DataLoader(SeededItems(images, 0), batch_size=4, drop_last=True,
                        sampler=EpochSampler(images, 1, 0, shuffle=True, seed=0))
    criterion = build_loss("jaccard+focal_tversky", 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, amsgrad=True)  # Table 1's optimiser
    progress = Progress(steps=len(loader), epochs=20, print_freq=100, enabled=False, world=1,
                        device=torch.device("cpu"))
    losses = []
    for epoch in range(20):
        loader.sampler.set_epoch(epoch)
        totals, steps = train.train_one_epoch(model, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                                              loader, torch.device("cpu"), epoch, amp="none", clip_grad=0.0,
                                              progress=progress, stop=StopRequests())
        losses.append(totals["loss"] / steps)
    scored = DataLoader(images, batch_size=8)
    summary = train.evaluate(model, scored, torch.device("cpu"), "none", 1, len(images))
    floor = all_background_scores((masks for _, masks in scored), 1)
    assert floor["dice_pooled"] == 0.0 and summary["images"] == 8
    assert losses[-1] < 0.8 * losses[0], losses
    assert summary["dice_pooled"] > 0.2 and summary["dice_mean_per_image"] > 0.15, summary
