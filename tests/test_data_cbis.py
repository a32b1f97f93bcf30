"""The CBIS-DDSM reader: fake download trees in both layouts with every pitfall of datasets.md §1.5, and the real
case-description CSVs in ../shared/data (read_dicom itself: test_dicom.py)."""
import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from readers import cbis
from helpers import listing, write_dicom
import data
from readers import mammograms
from data import DataError, build_dataset, read_dicom

MASS_HEADER = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
               "image file path", "cropped image file path", "ROI mask file path"]
SHAPE = (96, 64)  # (rows, columns) of every fake full mammogram


# ---------------------------------------------------------------------------------------------------------------------
# Fake CBIS-DDSM downloads

_UIDS = iter(range(1, 10 ** 6))


def _uid() -> str:
    return f"1.3.6.1.4.1.9590.100.1.2.{3000000000 + 7919 * next(_UIDS)}"  # last 5 digits unique, as TCIA's


# (patient, side, view, [(kind, lesion box (top, left, height, width)), ...]) ; kinds:
#   ok        crop = 000000 / 1-1, mask = 000001 / 1-2 as the CSV says
#   swapped   the file the CSV calls the crop is the mask and vice versa
#   own       (current layout) the crop sits in its own "cropped images" series (pitfall 7)
#   mismatch  the mask is smaller than the image: skipped and reported
#   missing   the ROI folder was never downloaded
# "nofull" as view suffix: the full image is missing.
TRAIN_CASES = [
    ("P_00001", "LEFT", "CC", [("ok", (20, 10, 8, 6))]),
    ("P_00001", "LEFT", "MLO", [("swapped", (50, 30, 5, 5))]),
    ("P_00002", "RIGHT", "CC", [("ok", (10, 40, 6, 6)), ("own", (60, 20, 10, 8))]),
    ("P_00003", "LEFT", "CC", [("mismatch", (30, 30, 5, 5))]),
    ("P_00004", "RIGHT", "MLO", [("missing", (30, 30, 5, 5))]),
    ("P_00005", "LEFT", "CC-nofull", [("ok", (30, 30, 5, 5))]),
    ("P_00006", "LEFT", "CC", [("ok", (30, 30, 5, 5)), ("mismatch", (50, 20, 6, 6))]),
    *[(f"P_000{n}", "LEFT", "MLO", [("ok", (20 + n, 15, 7, 7))]) for n in range(10, 17)],
]
TEST_CASES = [("P_00020", "LEFT", "CC", [("swapped", (40, 12, 9, 9))]),
              ("P_00021", "RIGHT", "CC", [("ok", (5, 5, 4, 4))])]
GOOD_TRAIN = {"P_00001_LEFT_CC", "P_00001_LEFT_MLO", "P_00002_RIGHT_CC", *[f"P_000{n}_LEFT_MLO" for n in range(10, 17)]}


def _lesion(box: tuple[int, int, int, int], shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    top, left, height, width = box
    mask[top:top + height, left:left + width] = 255
    return mask


def write_cbis_tree(root: Path, layout: str, *, metadata: bool = True) -> None:
    """A small CBIS-DDSM download (classic UID folders, or the current NBIA layout + metadata.csv) with its CSVs."""
    rng = np.random.default_rng(0)
    series_rows = []

    def series(subject: str, description: str, files: dict[str, np.ndarray]) -> tuple[str, str, dict[str, str]]:
        study, series_uid = _uid(), _uid()
        if layout == "classic":
            folder, names = Path(subject) / study / series_uid, {key: f"{key}.dcm" for key in files}
        else:
            folder = (Path("CBIS-DDSM") / subject / f"07-20-2016-DDSM-NA-{study[-5:]}"
                      / f"1.000000-{description}-{series_uid[-5:]}")
            names = {key: f"1-{i}.dcm" for i, key in enumerate(sorted(files), start=1)}  # 000000 -> 1-1, 000001 -> 1-2
        for key, pixels in files.items():
            write_dicom(root / folder / names[key], pixels)
        series_rows.append((series_uid, subject, study, description, f"./{folder.as_posix()}"))
        # The CSV always names files the classic way, 000000.dcm / 000001.dcm, with the UIDs.
        return study, series_uid, {key: f"{subject}/{study}/{series_uid}/{key}.dcm" for key in files}

    for name, cases in (("mass_case_description_train_set.csv", TRAIN_CASES),
                        ("mass_case_description_test_set.csv", TEST_CASES)):
        prefix = "Mass-Training" if "train" in name else "Mass-Test"
        rows = []
        for patient, side, view, rois in cases:
            subject = f"{prefix}_{patient}_{side}_{view.split('-')[0]}"
            full = (rng.random(SHAPE) * 30000).astype(np.uint16)
            full[:, : SHAPE[1] // 2] += 20000  # a brighter "breast" half
            if view.endswith("nofull"):
                image_path = f"{subject}/{_uid()}/{_uid()}/000000.dcm"
            else:
                image_path = series(subject, "full mammogram images", {"000000": full})[2]["000000"]
            for number, (kind, box) in enumerate(rois, start=1):
                roi_subject = f"{subject}_{number}"
                mask = _lesion(box) if kind != "mismatch" else _lesion(box, (SHAPE[0] - 16, SHAPE[1] - 8))
                crop = (rng.random((box[2] + 4, box[3] + 4)) * 60000).astype(np.uint16)
                if kind == "missing":
                    paths = {key: f"{roi_subject}/{_uid()}/{_uid()}/{key}.dcm" for key in ("000000", "000001")}
                    crop_path, mask_path = paths["000000"], paths["000001"]
                elif kind == "own":
                    crop_path = series(roi_subject, "cropped images", {"000000": crop})[2]["000000"]
                    mask_path = series(roi_subject, "ROI mask images", {"000000": mask})[2]["000000"]
                else:
                    files = {"000000": mask, "000001": crop} if kind == "swapped" else {"000000": crop, "000001": mask}
                    paths = series(roi_subject, "ROI mask images", files)[2]
                    crop_path, mask_path = paths["000000"], paths["000001"]
                rows.append([patient, 3, side, view.split("-")[0], number, "mass", "OVAL", "CIRCUMSCRIBED", 4,
                             "BENIGN", 3, image_path, crop_path, mask_path + "\n"])  # the mask path's stray newline
        with open(root / name, "w", newline="") as file:
            csv.writer(file).writerows([MASS_HEADER, *rows])
    if layout == "current" and metadata:
        with open(root / "metadata.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
                             "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
                             "Modality", "SOP Class Name", "SOP Class UID", "Number of Images", "File Size",
                             "File Location", "Download Timestamp"])
            for series_uid, subject, study, description, location in series_rows:
                writer.writerow([series_uid, "CBIS-DDSM", "NO", "https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY",
                                 subject, study, "", "07-20-2016", description, "", "MG",
                                 "Secondary Capture Image Storage", "1.2.840.10008.5.1.4.1.1.7", 1, "1 KB", location,
                                 "2024-01-01T00:00:00"])


def _cbis(root, split, tmp_path, **options):
    options = dict(cache_dir=tmp_path / "cache", orient=False, augment=False, in_channels=1, verbose=False) | options
    return build_dataset("cbis", root, split, SHAPE, **options)


def test_a_full_mammogram_downloaded_twice_under_two_folder_names_is_one_image():
    """Two retriever versions name one series' folder differently; both copies are the one full image. Two files
    in one folder of the series cannot be told apart."""
    csv_path = "Mass-Training_P_00001_LEFT_CC/1.3.6.1.4.1.9590.100.1.2.4226/1.3.6.1.4.1.9590.100.1.2.224515/000000.dcm"
    old = Path("Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1-full mammogram images-24515/000000.dcm")
    new = Path("Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-NA-74994/1.000000-full mammogram images-24515/1-1.dcm")
    assert cbis._full_image([old, new], csv_path) == old
    assert cbis._full_image([old, old.with_name("000001.dcm")], csv_path) is None


@pytest.mark.parametrize("layout,metadata", [("classic", False), ("current", True), ("current", False)])
def test_cbis_both_layouts_and_every_pitfall(tmp_path, layout, metadata, capsys):
    root = tmp_path / "download"
    root.mkdir()
    write_cbis_tree(root, layout, metadata=metadata)
    train = _cbis(root, "train", tmp_path, verbose=True)
    summary = capsys.readouterr().out
    val = _cbis(root, "val", tmp_path)
    test = _cbis(root, "test", tmp_path)
    ids = {i.removeprefix("Mass-Training_") for i in train.ids + val.ids}
    assert ids == GOOD_TRAIN
    assert {i.removeprefix("Mass-Test_") for i in test.ids} == {"P_00020_LEFT_CC", "P_00021_RIGHT_CC"}
    patients = lambda ds: {i.split("_")[2] for i in ds.ids}
    assert not patients(train) & patients(val) and len(val) >= 1

    # Every mask is exactly the union of the lesions written (swapped names, own crop series, several ROIs).
    boxes = {f"{p}_{s}_{v}": [box for _, box in rois] for p, s, v, rois in TRAIN_CASES + TEST_CASES}
    for dataset in (train, val, test):
        for index, item in enumerate(dataset.ids):
            image, mask = dataset[index]
            expected = np.zeros(SHAPE, bool)
            for box in boxes[item.split("_", 1)[1]]:
                expected |= _lesion(box) > 0
            assert image.shape == (1, *SHAPE) and mask.dtype == torch.int64
            np.testing.assert_array_equal(mask.numpy(), expected, err_msg=item)

    # Skipped rows: reported once, with their reasons, in the summary and in the file.
    rows = list(csv.DictReader(open(listing(tmp_path / "cache", "cbis-mass", "train")))) + \
        list(csv.DictReader(open(listing(tmp_path / "cache", "cbis-mass", "val"))))
    reasons = Counter(row["reason"].split(":")[0] for row in rows)
    assert reasons == {"no full-size mask": 2, "ROI files missing": 1, "full mammogram missing": 1,
                       "image skipped": 1}
    assert {row["id"] for row in rows} == {"Mass-Training_P_00003_LEFT_CC_1", "Mass-Training_P_00004_RIGHT_MLO_1",
                                           "Mass-Training_P_00005_LEFT_CC_1", "Mass-Training_P_00006_LEFT_CC_1",
                                           "Mass-Training_P_00006_LEFT_CC_2"}
    assert summary.count("\n") == 1 and f"{len(train)} images" in summary and listing(tmp_path / "cache", "cbis-mass", "train").name in summary
    train_skips = sum(1 for _ in csv.DictReader(open(listing(tmp_path / "cache", "cbis-mass", "train"))))
    assert f"skipped rows: {train_skips}" in summary


def test_cbis_repeated_download_old_doi_folder_and_stray_mask_values(tmp_path):
    """The retriever run twice (a second manifest holding copies of every series), a mask with a few values between
    0 and 255, and the older retriever's DOI/ folder: every test image is still found, with its exact mask."""
    root = tmp_path / "download"
    root.mkdir()
    write_cbis_tree(root, "current", metadata=True)
    (root / "manifest-2").mkdir()
    shutil.copytree(root / "CBIS-DDSM", root / "manifest-2" / "CBIS-DDSM")
    shutil.copy(root / "metadata.csv", root / "manifest-2" / "metadata.csv")
    mask_file = next(p for p in (root / "CBIS-DDSM").rglob("*.dcm") if "Mass-Test_P_00021_RIGHT_CC_1" in p.as_posix()
                     and mammograms.dicom_shape(p) == SHAPE)
    stray = read_dicom(mask_file)
    stray = np.round(stray / stray.max() * 255).astype(np.uint16)
    stray[6, 6] = 128  # inside the lesion (5, 5, 4, 4): still lesion; a lone stray value, not an image
    write_dicom(mask_file, stray)
    test = _cbis(root, "test", tmp_path)
    assert {i.removeprefix("Mass-Test_") for i in test.ids} == {"P_00020_LEFT_CC", "P_00021_RIGHT_CC"}
    assert test[test.ids.index("Mass-Test_P_00021_RIGHT_CC")][1].numpy().tolist() == (_lesion((5, 5, 4, 4)) > 0
                                                                                     ).tolist()
    old = tmp_path / "old"
    write_cbis_tree(old / "DOI", "classic")
    for name in ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv"):
        (old / "DOI" / name).rename(old / name)
    assert len(_cbis(old, "test", tmp_path / "old-cache")) == 2


def test_cbis_tree_follows_the_retrievers_file_locations(tmp_path):
    """metadata.csv in a manifest folder, with Windows separators, pointing where no layout rule would look."""
    folder = tmp_path / "manifest-1" / "elsewhere" / "1.000000-full mammogram images-24515"
    write_dicom(folder / "1-1.dcm", np.zeros((4, 4), np.uint16))
    (tmp_path / "manifest-1" / "metadata.csv").write_text(
        "Series UID,Subject ID,File Location\n1.2.3,Mass-Test_P_00001_LEFT_CC,"
        ".\\elsewhere\\1.000000-full mammogram images-24515\n")
    tree = cbis.CbisTree(tmp_path)
    assert tree.files("Mass-Test_P_00001_LEFT_CC") == [folder / "1-1.dcm"]
    assert tree.files("Mass-Test_P_00002_LEFT_CC") == []


def test_cbis_cache_is_reused_rebuilt_on_change_and_written_atomically(tmp_path, monkeypatch):
    root = tmp_path / "download"
    root.mkdir()
    write_cbis_tree(root, "current")
    cache = tmp_path / "cache"
    first = _cbis(root, "test", tmp_path)
    items = [first[i] for i in range(len(first))]
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == len(first) == 2

    # A second dataset reads the cache: decoding DICOMs would now fail.
    def no_decoding(*args):
        raise AssertionError("decoded although cached")
    monkeypatch.setattr(data, "_cbis_sample", no_decoding)
    again = _cbis(root, "test", tmp_path)
    for index, (image, mask) in enumerate(items):
        cached_image, cached_mask = again[index]
        assert torch.allclose(cached_image, image)
        assert torch.equal(cached_mask, mask)
    monkeypatch.undo()

    # Changing a source file (size/mtime) or a preprocessing option gives a new key, so the entry is rebuilt.
    full = next(p for p in root.rglob("*.dcm") if "Mass-Test_P_00021_RIGHT_CC/" in p.as_posix())
    pixels = read_dicom(full)
    write_dicom(full, (np.flipud(pixels) * 65535).astype(np.uint16))
    os.utime(full, ns=(full.stat().st_atime_ns, full.stat().st_mtime_ns + 10 ** 9))
    changed = _cbis(root, "test", tmp_path)
    index = changed.ids.index("Mass-Test_P_00021_RIGHT_CC")
    assert changed.cache_files[index] != first.cache_files[index]
    assert not torch.equal(changed[index][0], items[index][0])
    assert _cbis(root, "test", tmp_path, crop_breast=True).cache_files[0] != first.cache_files[0]

    # A run killed while writing leaves neither a partial entry nor its temporary file.
    fresh = _cbis(root, "test", tmp_path, cache_dir=tmp_path / "killed")
    def killed(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        fresh[0]
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "killed").iterdir()] == [listing(tmp_path / "killed", "cbis-mass", "test").name]
    fresh[0]
    assert len(list((tmp_path / "killed").glob("*.npz"))) == 1


def test_cbis_broken_files_end_in_skip_or_data_error(tmp_path):
    root = tmp_path / "download"
    root.mkdir()
    write_cbis_tree(root, "classic")
    full = next(p for p in root.rglob("*.dcm") if "Mass-Test_P_00020_LEFT_CC/" in p.as_posix())
    full.write_bytes(full.read_bytes()[:-2000])  # truncated download: caught from the header, skipped
    mask_folder = next(p.parent for p in root.rglob("*.dcm") if "Mass-Test_P_00021_RIGHT_CC_1/" in p.as_posix())
    for file in mask_folder.iterdir():  # a full-size file that is no binary mask: refused when decoded
        write_dicom(file, (np.random.default_rng(1).random(SHAPE) * 900).astype(np.uint16))
    dataset = _cbis(root, "test", tmp_path)
    assert dataset.ids == ["Mass-Test_P_00021_RIGHT_CC"]
    skipped = list(csv.DictReader(open(listing(tmp_path / "cache", "cbis-mass", "test"))))
    assert len(skipped) == 1 and "truncated" in skipped[0]["reason"]
    with pytest.raises(DataError, match="is a mask"):
        dataset[0]


def test_cbis_calcifications_limit_and_missing_inputs(tmp_path):
    root = tmp_path / "download"
    root.mkdir()
    write_cbis_tree(root, "classic")
    # The calc CSVs spell "breast density" with a space and name crop 000001 / mask 000000.
    with open(root / "mass_case_description_train_set.csv") as file:
        rows = list(csv.reader(file))
    rows[0][1] = "breast density"
    with open(root / "calc_case_description_train_set.csv", "w", newline="") as file:
        csv.writer(file).writerows(rows[:4])
    calc = _cbis(root, "train", tmp_path, abnormality="calcification", val_fraction=0.0)
    assert sorted(calc.ids) == ["Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00001_LEFT_MLO",
                                "Mass-Training_P_00002_RIGHT_CC"]
    assert len(_cbis(root, "train", tmp_path, limit=2)) == 2
    with pytest.raises(DataError, match="calc_case_description_test_set.csv"):
        _cbis(root, "test", tmp_path, abnormality="calcification")
    with pytest.raises(DataError, match="abnormality"):
        _cbis(root, "test", tmp_path, abnormality="both")
    with pytest.raises(DataError, match="data root"):
        build_dataset("cbis", tmp_path / "nowhere", "train", 64)


def test_cbis_loads_with_two_workers(tmp_path):
    root = tmp_path / "download"
    root.mkdir()
    write_cbis_tree(root, "current")
    dataset = _cbis(root, "train", tmp_path, in_channels=3, augment=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    batches = list(loader)
    assert sum(len(masks) for _, masks in batches) == len(dataset)
    assert batches[0][0].shape == (3, 3, *SHAPE) and batches[0][1].dtype == torch.int64
    assert len(list((tmp_path / "cache").glob("*.npz"))) == len(dataset)  # every worker's entry is complete
    assert all(np.load(p)["image"].shape == SHAPE for p in (tmp_path / "cache").glob("*.npz"))


# ---------------------------------------------------------------------------------------------------------------------
# The real case-description CSVs

@pytest.mark.parametrize("name,rows,images,patients", [
    ("mass_case_description_train_set.csv", 1318, 1231, 691), ("mass_case_description_test_set.csv", 378, 361, 201),
    ("calc_case_description_train_set.csv", 1546, 1227, 602), ("calc_case_description_test_set.csv", 326, 284, 151)])
def test_real_csvs_match_published_counts(cbis_csvs, name, rows, images, patients):
    parsed = cbis.read_case_rows(cbis_csvs / name)
    assert len(parsed) == rows
    assert len({row["image file path"] for row in parsed}) == images
    assert len({row["patient_id"] for row in parsed}) == patients
    assert not any("\n" in value for row in parsed for value in row.values() if isinstance(value, str))


def test_real_mass_training_split_is_by_patient_and_about_80_20(cbis_csvs):
    train = cbis.cbis_images(cbis_csvs, "train")
    val = cbis.cbis_images(cbis_csvs, "val")
    assert len(train) + len(val) == 1231 and not set(train) & set(val)
    patients = lambda images: {rows[0]["patient_id"] for rows in images.values()}
    assert not patients(train) & patients(val)
    assert abs(len(val) / (len(train) + len(val)) - 168 / 858) < 0.03  # the thesis' 690/168 ratio
    assert cbis.cbis_images(cbis_csvs, "val") == val  # fixed seed
    assert cbis.cbis_images(cbis_csvs, "val", split_seed=1).keys() != val.keys()
    assert sum(len(rows) for rows in train.values()) + sum(len(rows) for rows in val.values()) == 1318
    assert sum(len(rows) > 1 for rows in {**train, **val}.values()) == 1231 - 1173  # images with several masses


def test_real_csvs_without_images_skip_and_report_every_row(cbis_csvs, tmp_path):
    """The full CSVs over a download that holds nothing: nothing crashes and every row is reported, the mass rows
    (1318 + 378) and the calcification rows (1546 + 326) in lists of their own in the shared cache folder."""
    counted = Counter()
    for abnormality in ("mass", "calcification"):
        for split in ("train", "val", "test"):
            dataset = build_dataset("cbis", tmp_path, split, 64, abnormality=abnormality, csv_dir=cbis_csvs,
                                    cache_dir=tmp_path / "c", verbose=False)
            assert len(dataset) == 0
            listed = listing(tmp_path / "c", f"cbis-{abnormality}", split)
            counted[abnormality] += sum(1 for _ in csv.DictReader(open(listed)))
    assert counted == {"mass": 1318 + 378, "calcification": 1546 + 326}
