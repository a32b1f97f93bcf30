"""Your own data (folders.py, data.py's "folder") and the splits by group (splits.py): pairs by stem in images/ and
masks/, 8/16-bit PNG, TIFF and DICOM images, binary and class-index masks, split.csv, skipped pairs, and the folds of
a cross-validation, images in subfolders, and the inputs refused or skipped with their reasons, on folders the tests
write themselves."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from readers import folders
from readers import splits
from helpers import listing, run_processes, write_dicom
from data import DataError, build_dataset, prepare_datasets

SIZE = 32


def mammogram(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright blob on a darker breast on the left: (image float in [0, 1], bool mask of the blob)."""
    rows, cols = np.ogrid[:height, :width]
    image = 0.2 + 0.3 * (cols < width * 0.7) + 0.05 * rng.random((height, width))
    cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 5, width // 2)
    blob = (rows - cy) ** 2 + (cols - cx) ** 2 <= (min(height, width) // 6) ** 2
    return np.clip(image + 0.4 * blob, 0, 1), blob


@pytest.fixture
def folder(tmp_path):
    """20 pairs in four formats (8-bit PNG, 16-bit PNG, TIFF, DICOM) with 0/255 or 0/1 masks, two patients' worth of
    images per group, plus one image without a mask and one whose mask has another size."""
    root, rng = tmp_path / "mine", np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(20):
        image, blob = mammogram(rng, 60 + i, 50)
        stem, kind = f"case{i:02d}", i % 4
        if kind == 0:
            Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "images" / f"{stem}.png")
        elif kind == 1:
            Image.fromarray((image * 65535).round().astype(np.uint16)).save(root / "images" / f"{stem}.png")
        elif kind == 2:
            Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "images" / f"{stem}.tif")
        else:
            write_dicom(root / "images" / f"{stem}.dcm", (image * 4095).round().astype(np.uint16), bits_stored=12)
        scale = 255 if i % 2 else 1  # both mask conventions
        Image.fromarray(blob.astype(np.uint8) * scale).save(root / "masks" / f"{stem}.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "images" / "orphan.png")  # no mask
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "images" / "odd.png")
    Image.fromarray(np.zeros((41, 40), np.uint8)).save(root / "masks" / "odd.png")  # another size
    return root


def build(root, split, **options):
    return build_dataset("folder", root, split, SIZE, in_channels=1, augment=False, verbose=False,
                         cache_dir=root.parent / "cache", **options)


def test_pairs_by_stem_in_every_format_with_a_seeded_split_and_the_skips_listed(folder):
    train, val = build(folder, "train"), build(folder, "val")
    assert sorted(train.ids + val.ids) == [f"case{i:02d}" for i in range(20)] and len(val) == 4  # 80/20
    assert build(folder, "val").ids == val.ids  # seeded
    assert build(folder, "val", split_seed=1).ids != val.ids
    for dataset in (train, val):
        for index in range(len(dataset)):
            image, mask = dataset[index]
            assert image.shape == (1, SIZE, SIZE) and set(mask.unique().tolist()) == {0, 1}  # 0/255 and 0/1 alike
    skipped = {row["id"]: row["reason"] for split in ("train", "val")
               for row in csv.DictReader(open(listing(folder.parent / "cache", "folder", split)))}
    assert skipped["orphan"].startswith("mask missing") and skipped["odd"].startswith("mask size mismatch")
    # each skipped file listed once, with the training images (it belongs to no drawn split)
    assert not list(csv.DictReader(open(listing(folder.parent / "cache", "folder", "val"))))


def test_split_csv_fixes_the_split_and_groups_stay_together(folder):
    for unusable in ("orphan", "odd"):  # the split draws them too (the next test): here 10 patients alone
        (folder / "images" / f"{unusable}.png").unlink()
    with open(folder / "split.csv", "w") as file:
        file.write("file,group\n" + "".join(f"case{i:02d}.png,patient{i // 2}\n" for i in range(20)))
    for seed in range(5):  # whatever the seed, both images of a patient are on one side
        val = set(build(folder, "val", split_seed=seed).ids)
        assert all((f"case{2 * p:02d}" in val) == (f"case{2 * p + 1:02d}" in val) for p in range(10))
        assert len(val) == 4  # 2 of the 10 patients
    rows = [f"case{i:02d}.png,{'test' if i < 3 else 'val' if i < 6 else 'train'}\n" for i in range(20)]
    (folder / "split.csv").write_text("file,split\n" + "".join(rows))
    assert build(folder, "test").ids == ["case00", "case01", "case02"]
    assert build(folder, "val").ids == ["case03", "case04", "case05"] and len(build(folder, "train")) == 14
    (folder / "split.csv").write_bytes("file,group\ncase00.png,Müller\n".encode("cp1252"))  # Excel's plain CSV
    with pytest.raises(DataError, match=r"split.csv: not UTF-8 text \(byte \d+\); save it as \"CSV UTF-8\""):
        build(folder, "train")


def test_a_drawn_split_does_not_move_when_a_missing_mask_is_added(folder):
    """The split is drawn over every image found, usable or not: adding the missing mask puts that image on one
    side and moves no other, so a model's validation images stay images it never trained on."""
    (folder / "masks" / "case07.png").rename(folder.parent / "case07.png")
    before = {split: set(build(folder, split).ids) for split in ("train", "val")}
    (folder.parent / "case07.png").rename(folder / "masks" / "case07.png")
    after = {split: set(build(folder, split).ids) for split in ("train", "val")}
    assert "case07" not in before["train"] | before["val"] and "case07" in after["train"] | after["val"]
    assert all(after[split] - {"case07"} == before[split] for split in ("train", "val"))


def test_class_index_masks_for_a_multiclass_model_and_bad_values_named(folder):
    for i in range(20):
        labels = np.zeros((60 + i, 50), np.uint8)
        labels[10:20, 5:15], labels[30:40, 20:30], labels[0:2, :] = 1, 2, 255  # two classes and an ignored band
        Image.fromarray(labels).save(folder / "masks" / f"case{i:02d}.png")
    dataset = build(folder, "train", num_classes=3)
    assert dataset.num_classes == 3 and set(dataset[0][1].unique().tolist()) == {0, 1, 2, 255}
    binary = build_dataset("folder", folder, "train", SIZE, in_channels=1, verbose=False,
                           cache_dir=folder.parent / "binary")  # the same masks read as binary ones
    with pytest.raises(DataError, match=rf"{binary.ids[0]}.png: mask values \[0, 1, 2, 255\]; a binary mask holds"):
        binary[0]
    with pytest.raises(DataError, match=r"values \[2\] are not classes 0-1"):
        build_dataset("folder", folder, "train", SIZE, num_classes=2, verbose=False, cache_dir=folder.parent / "two")[0]


def test_folds_partition_the_pool_by_group_and_the_test_split_stays_out(folder):
    (folder / "split.csv").write_text("file,split,group\n" + "".join(
        f"case{i:02d}.png,{'test' if i >= 18 else 'train'},p{i // 3}\n" for i in range(20)))
    held_out = [build(folder, "val", fold=k, folds=3).ids for k in range(3)]
    pool = sorted(stem for fold in held_out for stem in fold)
    assert pool == [f"case{i:02d}" for i in range(18)]  # every image once; the test rows never in a fold
    for k in range(3):
        train = build(folder, "train", fold=k, folds=3).ids
        assert sorted(train + held_out[k]) == pool and not set(train) & set(held_out[k])
        assert not {int(s[4:]) // 3 for s in train} & {int(s[4:]) // 3 for s in held_out[k]}  # groups whole
    with pytest.raises(DataError, match="fold 3 of 3"):
        build(folder, "val", fold=3, folds=3)


def test_groups_in_part_depends_on_the_group_ids_alone():
    everyone = [f"p{i}" for i in range(50)]
    val = splits.groups_in_part(everyone, 0, (0.2, 0.8), seed=0)
    assert len(val) == 10 and splits.groups_in_part(list(reversed(everyone)) * 2, 0, (0.2, 0.8), seed=0) == val
    folds = [splits.groups_of_split({g: g[-1] in "02468" for g in everyone}, "val", (), 0, k, 5) for k in range(5)]
    assert sorted(g for fold in folds for g in fold) == sorted(everyone)
    assert all(sum(g[-1] in "02468" for g in fold) == 5 for fold in folds)  # each stratum cut alike
    # A patient added later (a folder that grows) moves at most one other patient across each cut: the val
    # images a model was chosen on do not become training images of the next run
    for seed, new in ((0, "a new"), (0, "p25b"), (0, "zzz"), (1, "a new"), (2, "p7b")):
        val = splits.groups_in_part(everyone, 0, (0.2, 0.8), seed)
        grown = splits.groups_in_part([*everyone, new], 0, (0.2, 0.8), seed) - {new}
        assert len(val ^ grown) <= 1, (seed, new, val ^ grown)
        fold = splits.groups_of_split(dict.fromkeys(everyone, 0), "val", (), seed, 2, 5)
        grown = splits.groups_of_split(dict.fromkeys([*everyone, new], 0), "val", (), seed, 2, 5) - {new}
        assert len(fold ^ grown) <= 2, (seed, new, fold ^ grown)  # fold 2 has two cuts


def tiny(root, *images: str, masks=None, value: int = 255):
    """16x16 8-bit images at images/<each path> and, unless `masks` names others, masks/<its id>.png (a square of
    `value` on 0); returns root."""
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for name in images:
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 80, np.uint8)).save(root / "images" / name)
    for name in [folders.image_id(name) + ".png" for name in images] if masks is None else masks:
        mask = np.zeros((16, 16), np.uint8)
        mask[4:9, 4:9] = value
        (root / "masks" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / name)
    return root


def reasons(root) -> dict[str, str]:
    """folder_items' skipped rows as {file: reason}."""
    return {file: reason for file, _, _, reason in folders.folder_items(root)[1]}


def test_a_0_255_mask_for_a_multiclass_model_is_refused_as_binary(tmp_path):
    root = tiny(tmp_path / "mine", *(f"a{i}.png" for i in range(5)))
    with pytest.raises(DataError, match=r"masks: the first \d masks hold only 0 and 255, no class 1-1: binary 0/255 "
                                        "masks, .*train without --num-classes"):
        build(root, "train", num_classes=2)
    assert set(build(root, "train")[0][1].unique().tolist()) == {0, 1}  # read as binary, the lesion is there
    tiny(root, *(f"a{i}.png" for i in range(5)), value=0)  # no lesion at all: a class-index mask like any other
    assert set(build(root, "train", num_classes=2)[0][1].unique().tolist()) == {0}
    tiny(root, "a0.png", value=255)  # one normal image with an ignored region, in a set of class indices: fine
    tiny(root, "a1.png", "a2.png", "a3.png", "a4.png", value=1)
    dataset = build(root, "train", num_classes=2)
    assert {int(dataset[i][1].max()) for i in range(len(dataset))} >= {1}
    (root / "masks" / "a2.png").write_bytes((root / "masks" / "a2.png").read_bytes()[:60])  # cut short
    with pytest.raises(DataError, match="a2.png: cannot read the mask"):
        folders.read_mask(root / "masks" / "a2.png", 2)
    # one of the first masks unusable: left out with its reason when the images are prepared, wherever it stands
    (root / "split.csv").write_text("file,split\n" + "".join(f"a{i}.png,{'val' if i == 0 else 'train'}\n"
                                                             for i in range(5)))
    train, val = build(root, "train", num_classes=2), build(root, "val", num_classes=2)  # val: the normal image
    prepare_datasets([train, val], workers=0)  # alone; its split is not refused as binary for it: the folder's
    assert train.ids == ["a1", "a3", "a4"] and val.ids == ["a0"]  # first masks decide, for every split


def test_a_black_and_white_palette_mask_is_read_by_its_colours_not_its_indices(tmp_path):
    """Pillow's own black/white palette puts white at index 0: read by index, the lesion would be background. A
    palette of classes (VOC's: 1 is dark red) keeps its indices."""
    lesion = np.zeros((6, 6), bool)
    lesion[2:4, 2:4] = True
    rgb = np.repeat(lesion[..., None] * np.uint8(255), 3, axis=2)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=2).save(tmp_path / "white_first.png")
    assert np.asarray(Image.open(tmp_path / "white_first.png"))[0, 0] == 1  # the background's index
    classes = Image.fromarray(lesion.astype(np.uint8)).convert("P")
    classes.putpalette([0, 0, 0, 128, 0, 0])
    classes.save(tmp_path / "voc_palette.png")
    for name in ("white_first.png", "voc_palette.png"):
        np.testing.assert_array_equal(folders.read_mask(tmp_path / name, 1), lesion)


def test_a_fixed_split_without_the_requested_split_names_split_csv(tmp_path):
    root = tiny(tmp_path / "mine", *(f"a{i}.png" for i in range(6)))
    (root / "split.csv").write_text("file,split\n" + "".join(f"a{i}.png,{'train' if i < 4 else 'test'}\n"
                                                              for i in range(6)))
    with pytest.raises(DataError, match=r"split.csv lists no val images: add rows with split val, or leave the split "
                                        "column empty to draw an 80/20 split"):
        build(root, "val")
    assert build(root, "test").ids == ["a4", "a5"] and len(build(root, "train")) == 4
    assert len(build(root, "val", fold=0, folds=2)) == 2  # cross-validation draws val from the train rows
    (root / "split.csv").write_text("file,split\na0.png,train\na1.png,train\nnone.png,val\n")  # no none.png
    with pytest.raises(DataError, match=r"split.csv lists 1 val image, none usable: .*skipped_folder-\w+_val.csv says why"):
        build(root, "val")
    assert "listed in split.csv, but no usable" in listing(tmp_path / "cache", "folder", "val").read_text()


def test_an_image_skipped_for_its_mask_is_one_row_named_in_the_summary(tmp_path, capsys):
    """An image split.csv lists whose mask is missing is one skipped row (not a second one for split.csv), and the
    one-line summary names the first skipped ids, not the CSV alone."""
    root = tiny(tmp_path / "mine", *(f"a{i}.png" for i in range(4)))
    (root / "masks" / "a3.png").unlink()
    (root / "split.csv").write_text("file,split\n" + "".join(f"a{i}.png,train\n" for i in range(4)))
    build_dataset("folder", root, "train", SIZE, in_channels=1, cache_dir=tmp_path / "cache")
    assert "skipped rows: 1 (1 mask missing: a3), listed in" in capsys.readouterr().out


def test_a_leaking_group_and_disagreeing_rows_raise_and_an_image_without_a_split_says_so(tmp_path):
    root = tiny(tmp_path / "mine", *(f"a{i}.png" for i in range(4)))
    (root / "split.csv").write_text("file,split,group\na0.png,train,p1\na1.png,val,p2\na2.png,val,p1\n")
    with pytest.raises(DataError, match=r"split.csv: group 'p1' is in train \(line 2\) and val \(line 4\)"):
        build(root, "train")
    (root / "split.csv").write_text("file,split\na0.png,train\na1.png,val\na0,val\n")
    with pytest.raises(DataError, match=r"split.csv: lines 2 and 4 give a0 different splits \('train', 'val'\)"):
        build(root, "train")
    (root / "split.csv").write_text("file,split\na0.png,train\na0.png,train\na1.png,val\na2.png,\n")  # a3 absent
    assert build(root, "train").ids == ["a0"] and build(root, "val").ids == ["a1"]  # a repeated row is harmless
    assert reasons(root)["images/a2.png"].startswith("split.csv gives no split for it")
    assert reasons(root)["images/a3.png"].startswith("not in split.csv")


def test_images_in_subfolders_pair_with_masks_at_the_same_path(tmp_path):
    root = tiny(tmp_path / "mine", "p1/a0.png", "p2/a0.png", "p2/a1.tif", "b.png")
    tiny(root, ".trash/c.png", "p1/.d.png")  # hidden: never read
    items = folders.folder_items(root)[0]
    assert [(i.stem, i.group, i.mask.relative_to(root).as_posix()) for i in items] == [
        ("b", "b", "masks/b.png"), ("p1/a0", "p1/a0", "masks/p1/a0.png"), ("p2/a0", "p2/a0", "masks/p2/a0.png"),
        ("p2/a1", "p2/a1", "masks/p2/a1.png")]  # each image its own group: no patient guessed from a folder name
    train, val = build(root, "train"), build(root, "val")
    assert sorted(train.ids + val.ids) == ["b", "p1/a0", "p2/a0", "p2/a1"]
    for dataset in (train, val):  # every pair read: its mask's 5x5 square, at twice the size
        assert all(dataset[i][1].sum() == 10 * 10 for i in range(len(dataset)))
    cached = sorted(path.name for path in (tmp_path / "cache").iterdir() if path.suffix == ".npz")
    assert len(cached) == 4 and any(name.startswith("p1__a0-") for name in cached)  # one flat cache folder
    (root / "split.csv").write_text("file,split\np1/a0.png,val\np2/a0,train\np2\\a1.tif,train\nb.png,train\n")
    assert build(root, "val").ids == ["p1/a0"] and build(root, "train").ids == ["b", "p2/a0", "p2/a1"]
    (root / "split.csv").write_text("file,split\na1.png,val\np1/a0.png,train\n")  # a bare name of a nested image
    assert reasons(root)["split.csv"].endswith("images/ holds p2/a1; name it by its path under images/")


def test_linked_subfolders_and_upper_case_png_masks_are_read(tmp_path):
    """A patient's folder linked in from elsewhere is read; links that lead inside images/ (read under their own
    names already: whichever the disk lists first must not hide the real folder) or above it (the dataset, the disk)
    are not. A mask named a0.Png pairs like a0.png; a.b.png is not a's mask."""
    root = tiny(tmp_path / "mine", "p1/a0.png", "a.png", "a.b.png", masks=["p1/a0.Png", "a.b.png"])
    tiny(tmp_path / "elsewhere", "p2/a0.png")
    (root / "images" / "p2").symlink_to(tmp_path / "elsewhere" / "images" / "p2")
    (root / "masks" / "p2").symlink_to(tmp_path / "elsewhere" / "masks" / "p2")
    for name, target in (("p1/up", root / "images"), ("a1", root / "images" / "p1"), ("z", root / "images" / "p1"),
                         ("dataset", root)):
        (root / "images" / name).symlink_to(target)
    items, skipped, _ = folders.folder_items(root)
    assert [(item.stem, item.mask.name) for item in items] == [("a.b", "a.b.png"), ("p1/a0", "a0.Png"),
                                                                ("p2/a0", "a0.png")]
    assert [(row[2], row[3].split(":")[0]) for row in skipped] == [("a", "mask missing")]


def test_two_images_sharing_a_stem_are_both_skipped(tmp_path):
    root = tiny(tmp_path / "mine", "a0.png", "a0.tif", "a1.png")
    found = reasons(root)
    assert found["images/a0.png"] == found["images/a0.tif"] == (
        "stem shared: two images share the stem a0 (a0.png, a0.tif): rename one")
    assert build(root, "train").ids + build(root, "val").ids == ["a1"]


@pytest.mark.parametrize("name", ["x.jpg", "x.tif"])
def test_a_mask_saved_under_another_suffix_is_named(tmp_path, name):
    root = tiny(tmp_path / "mine", "x.png", "y.png", masks=[name])
    found = reasons(root)
    assert found["images/x.png"].startswith("mask missing: no ") and found["images/x.png"].endswith(
        f"; found masks/{name}: masks must be PNG (lossless), named x.png")
    assert found["images/y.png"] == f"mask missing: no {root / 'masks' / 'y.png'}"  # nothing like it: no hint


def test_a_folder_trains_from_a_weights_file_evaluates_and_predicts_end_to_end(folder, tmp_path, capsys, one_thread):
    """The radiology researcher's path: their images and masks, encoder weights from a file, then evaluate.py's
    table on the validation images and predict.py's mask for one of their DICOMs."""
    import evaluate
    import predict
    import train
    torchvision = pytest.importorskip("torchvision")
    weights = torchvision.models.resnet34().state_dict()  # torchvision's layout, as downloaded
    torch.save(weights, tmp_path / "resnet34.pth")
    run = tmp_path / "run"
    assert train.cli(["--dataset", "folder", "--data-root", str(folder), "--cache-dir", str(tmp_path / "cache"),
                      "--weights", str(tmp_path / "resnet34.pth"), "--lr", "0", "--image-size", "32", "--epochs", "1",
                      "--batch-size", "4", "--decoder-channels", "16,16,16,16,16", "--workers", "0", "--panels", "0",
                      "--out-dir", str(run)]) == 0
    trained = torch.load(run / "best.pt", weights_only=True)["model"]
    assert torch.equal(trained["encoder.layer3.0.conv1.weight"], weights["layer3.0.conv1.weight"])  # lr 0 keeps them

    assert evaluate.main(evaluate.get_args_parser().parse_args([
        "--checkpoint", str(run / "best.pt"), "--dataset", "folder", "--data-root", str(folder), "--cache-dir",
        str(tmp_path / "cache"), "--workers", "0", "--timing-runs", "0", "--json", str(tmp_path / "scores.json")])) == 0
    (row,) = json.loads((tmp_path / "scores.json").read_text())["models"]
    assert sorted(row["per_image_dice"]) == sorted(build(folder, "val").ids)  # its 4 validation images, each scored
    assert "Dice, lesion images (%)" in capsys.readouterr().out

    dicom = next((folder / "images").glob("*.dcm"))
    assert predict.main(predict.get_args_parser().parse_args([  # eager: test_predict.py exports to ONNX (3-4 s)
        "--checkpoint", str(run / "best.pt"), "--input", str(dicom), "--output", str(tmp_path / "masks"),
        "--backend", "eager"])) == 0
    mask = np.array(Image.open(tmp_path / "masks" / f"{dicom.stem}_mask.png"))
    assert mask.shape == pydicom_shape(dicom) and set(np.unique(mask)) <= {0, 255}  # at the DICOM's own size


def pydicom_shape(path) -> tuple[int, int]:
    import pydicom
    return tuple(pydicom.dcmread(path).pixel_array.shape)


def test_an_image_that_cannot_be_used_is_left_out_before_training_not_an_epoch_in(folder, tmp_path, capsys):
    """A mask no model can read (RGB) passes the listing, which reads headers only; prepare_datasets decodes every
    image before the first step, leaves that one out, names it and lists it, and a training run goes through."""
    victim = build(folder, "train").ids[0]  # a training image
    mask = folder / "masks" / f"{victim}.png"
    Image.open(mask).convert("RGB").save(mask)
    train_set = build(folder, "train")
    assert victim in train_set.ids  # the listing cannot know
    count = len(train_set)
    prepare_datasets([train_set, build(folder, "val")], workers=0)
    assert victim not in train_set.ids and len(train_set) == count - 1
    assert len(train_set.cache_files) == len(train_set.sources) == count - 1
    printed = capsys.readouterr().out
    assert "train: 1 image(s) left out, since they cannot be used" in printed and "mask mode RGB" in printed
    (listing,) = (tmp_path / "cache").glob("unreadable_train-*.csv")
    with open(listing, newline="") as file:
        assert [row["id"] for row in csv.DictReader(file)] == [victim]
    prepare_datasets([train_set], workers=2)  # every entry built: nothing to do, nothing more left out
    assert len(train_set) == count - 1
    train_set[0]  # the cache hit an epoch would read


def _prepare_on_rank(rank, root, store, out):
    torch.set_num_threads(1)  # forked child: keep clear of the parent's thread pool
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dataset = build(root, "train")
        prepare_datasets([dataset], 0, rank, 2)
        (out / f"rank{rank}.json").write_text(json.dumps(dataset.ids))
    finally:
        torch.distributed.destroy_process_group()


def test_under_torchrun_every_process_keeps_the_same_images(folder, tmp_path):
    """Each process builds its share of the cache, rank 0 decides what is left out, all keep one set (or DDP would
    hang on sets of different lengths), and one listing names every image left out."""
    listed = build(folder, "train").ids
    unusable = [stem for stem in listed if stem in ("case01", "case04", "case09", "case13")]
    assert len(unusable) >= 2
    for stem in unusable:
        Image.open(folder / "masks" / f"{stem}.png").convert("RGB").save(folder / "masks" / f"{stem}.png")
    expected = [stem for stem in listed if stem not in unusable]
    run_processes(_prepare_on_rank, (folder, tmp_path / "store", tmp_path), 2)
    assert json.loads((tmp_path / "rank0.json").read_text()) == json.loads((tmp_path / "rank1.json").read_text()) \
        == expected
    (listing,) = (tmp_path / "cache").glob("unreadable_train-*.csv")
    with open(listing, newline="") as file:
        assert [row["id"] for row in csv.DictReader(file)] == unusable
