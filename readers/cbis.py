"""CBIS-DDSM as TCIA publishes it (§4.1): the case-description CSVs, the NBIA retriever's folder layouts, and which
file is each abnormality's mask. Every known pitfall of the download is handled here.

  * cbis_images     the official case-description CSVs -> {image id: its abnormality rows} for train/val/test, every
                    cell stripped (the mass CSVs end every "ROI mask file path" with a newline inside the quotes);
                    train/val split the training CSV by patient with a fixed seed (splits.groups_in_part).
  * CbisTree        finds a subject's DICOM files in either download layout:
                      classic   <root>/<subject>/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm (the CSV paths);
                      current   <root>/CBIS-DDSM/<subject>/<date>-DDSM-<n>/<n>.000000-<description>-<n>/1-1.dcm,
                                located through the retriever's metadata.csv when there is one.
                    Both are keyed on the subject, the first component of a CSV path, which names one image
                    (Mass-Training_P_00001_LEFT_CC) or one abnormality's ROI files (..._LEFT_CC_1).
  * check_mammogram reads only DICOM headers and decides which file of each abnormality is its mask: the one with
                    the full image's rows x columns (crops are small; the CSV's crop/mask columns and file names are
                    swapped in hundreds of rows, so names are never trusted). An abnormality with no such file (size
                    mismatch, missing or unreadable files) skips its whole image, since a mask missing one lesion
                    would be silently wrong; the caller reports every skipped row.
  * load_mammogram  decodes the full image and one binary mask per abnormality (the caller merges them).

    tree, images = CbisTree("/data/cbis"), cbis_images("/data/cbis", "train")  # {image id: its CSV rows}
    full, candidates, skipped = check_mammogram(tree, images["Mass-Training_P_00001_LEFT_CC"])
    image, masks = load_mammogram(full, candidates)  # (H, W) float32 in [0, 1], one (H, W) bool per lesion

Table 1's split (§4.1: 858 mass images, 690 train / 168 val) is not reproducible from what TCIA publishes. The mass
CSVs hold 1231 training images of 691 patients and 361 test images of 201 patients; none of the obvious subsets
gives 858 or 690/168 (malignant: 602 + 145 images; one abnormality: 1173 + 348; CC views 573 + 170). That 690 is
one short of the training CSV's 691 patients suggests patients were counted, not images, but the thesis does not say.
So "train"/"val" here are the training CSV's 1231 images split 80/20 by patient (987/244, about Table 1's ratio),
and "test" the official test CSV.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .mammograms import DataError, dicom_shape, read_dicom
from .splits import groups_in_part

CSV_NAMES = {  # (abnormality, official split) -> file name as TCIA publishes it
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calcification", "train"): "calc_case_description_train_set.csv",
    ("calcification", "test"): "calc_case_description_test_set.csv",
}
CSV_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id", "image file path",
               "cropped image file path", "ROI mask file path")


MASK_STRAY_FRACTION = 0.01  # of a mask's non-zero pixels, the most that may lie below its maximum


def read_mask(path: Path) -> np.ndarray | None:
    """A CBIS ROI mask as (H, W) bool (pixels above half the maximum), or None if the file is not a mask: empty, or
    an image (over MASK_STRAY_FRACTION of its non-zero pixels below the maximum; a mask holds 0 and 255, give or
    take a few stray values)."""
    values = read_dicom(path)
    top = values.max()
    lit = np.count_nonzero(values)
    if top == 0 or lit - np.count_nonzero(values == top) > MASK_STRAY_FRACTION * lit:
        return None
    return values > top / 2


# ---------------------------------------------------------------------------------------------------------------------
# Case-description CSVs and the patient split

def read_case_rows(path: Path) -> list[dict]:
    """Rows of one case-description CSV with every header and cell stripped, plus 'row' (1-based) and 'csv'."""
    if not path.is_file():
        raise DataError(f"{path}: CBIS-DDSM case-description CSV not found; download the four CSVs from the TCIA "
                        "CBIS-DDSM page into the data root (--data-root)")
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in CSV_COLUMNS if name not in header]
        if missing:
            raise DataError(f"{path}: columns {missing} missing; use the original TCIA CSV (some copies rename them)")
        rows = []
        for number, cells in enumerate(reader, start=1):
            if not any(cell.strip() for cell in cells):  # blank lines, e.g. at the end of the file
                continue
            row = {name: cell.strip() for name, cell in zip(header, cells)}
            if not all(row.get(name) for name in CSV_COLUMNS):
                raise DataError(f"{path}: row {number} has empty or missing cells in {list(CSV_COLUMNS)}")
            rows.append(dict(row, row=number, csv=path.name))
    return rows


def subject_of(csv_path: str) -> str:
    """First component of a CSV file path: the subject (one image, or one abnormality's ROI files)."""
    return csv_path.replace("\\", "/").split("/")[0]


def cbis_images(csv_dir: str | os.PathLike, split: str, *, abnormality: str = "mass", val_fraction: float = 0.2,
                split_seed: int = 0) -> dict[str, list[dict]]:
    """{image id (subject): its CSV rows, one per abnormality}, sorted, for "train", "val" or "test"."""
    if abnormality not in ("mass", "calcification"):
        raise DataError(f"cbis: abnormality must be 'mass' or 'calcification', got {abnormality!r}")
    rows = read_case_rows(Path(csv_dir) / CSV_NAMES[abnormality, "test" if split == "test" else "train"])
    if split != "test":
        patients = [row["patient_id"] for row in rows]
        validation = groups_in_part(patients, 0, (val_fraction, 1 - val_fraction), split_seed)  # the first 20%
        rows = [row for row in rows if (row["patient_id"] in validation) == (split == "val")]
    images: dict[str, list[dict]] = {}
    for row in rows:  # several abnormalities of one image share its subject id
        images.setdefault(subject_of(row["image file path"]), []).append(row)
    return dict(sorted(images.items()))


# ---------------------------------------------------------------------------------------------------------------------
# The download tree

class CbisTree:
    """Finds the DICOM files of a subject, in the classic (UID folders) or current (NBIA retriever) layout."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: CBIS-DDSM data root not found; pass the folder holding the DICOM tree")
        self.folders: dict[str, list[Path]] = {}  # subject -> series folders, from metadata.csv files
        self.bases = [self.root, self.root / "CBIS-DDSM", self.root / "DOI"]  # DOI/: older retriever versions
        for metadata in [self.root / "metadata.csv", *sorted(self.root.glob("*/metadata.csv"))]:
            if metadata.is_file():
                self._read_metadata(metadata)
                self.bases += [metadata.parent, metadata.parent / "CBIS-DDSM"]

    def _read_metadata(self, path: Path) -> None:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            # The retriever writes "Subject ID,...,File Location"; some tools rewrite them as subject_id, file_location.
            header = [name.strip().lower().replace(" ", "_") for name in next(reader, [])]
            if "subject_id" not in header or "file_location" not in header:
                raise DataError(f"{path}: no 'Subject ID'/'File Location' columns; is this the NBIA retriever's "
                                "metadata.csv?")
            subject, location = header.index("subject_id"), header.index("file_location")
            for cells in reader:
                if len(cells) > max(subject, location):
                    relative = cells[location].strip().replace("\\", "/").removeprefix("./")
                    self.folders.setdefault(cells[subject].strip(), []).append(path.parent / relative)

    def relative(self, path: Path) -> str:
        """`path` as the user sees it under the data root."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def files(self, subject: str) -> list[Path]:
        """All .dcm files of a subject, sorted; empty if the subject is not on disk."""
        folders = self.folders.get(subject) or [base / subject for base in self.bases]
        return sorted({file for folder in folders if folder.is_dir() for file in folder.rglob("*.dcm")})


def _full_image(files: list[Path], csv_path: str) -> Path | None:
    """The full mammogram among a subject's files; several (merged downloads) are told apart by series UID."""
    if len(files) == 1:
        return files[0]
    series = csv_path.replace("\\", "/").split("/")[-2]  # classic folder name, or its last 5 digits in the current one
    matches = [f for f in files if series in f.parts or f.parent.name.endswith("-" + series[-5:])]
    if len({(f.parent.name, f.name) for f in matches}) == 1:  # one file, or copies of it from repeated downloads
        return matches[0]
    return None


def check_mammogram(tree: CbisTree, rows: list[dict]) -> tuple[Path, list[list[Path]], list[tuple[dict, str]]]:
    """Header-only check of one image and its abnormality rows: (full image, mask candidates per row, skipped).

    skipped lists (row, 'kind: detail'); if it is not empty the image must not be used.
    """
    image_path = rows[0]["image file path"]
    files = tree.files(subject_of(image_path))
    full = _full_image(files, image_path)
    if full is None:
        reason = (f"full mammogram ambiguous: {len(files)} DICOM files and none in series {image_path.split('/')[-2]}"
                  if files else f"full mammogram missing: no DICOM for {subject_of(image_path)}")
        return Path(), [], [(row, reason) for row in rows]
    try:
        shape = dicom_shape(full)
    except DataError as error:
        return full, [], [(row, f"full mammogram unusable: {error}") for row in rows]
    candidates, problems = [], []
    for row in rows:
        subjects = {subject_of(row["ROI mask file path"]), subject_of(row["cropped image file path"])}
        files = sorted({file for subject in subjects for file in tree.files(subject)})
        shapes = {}
        for file in files:
            try:
                shapes[file] = dicom_shape(file)
            except DataError as error:
                shapes[file] = str(error)
        masks = [file for file in files if shapes[file] == shape]
        candidates.append(masks)
        if not files:
            problems.append((row, f"ROI files missing: no DICOM for {' or '.join(sorted(subjects))}"))
        elif not masks:
            found = "; ".join(f"{tree.relative(f)} {'x'.join(map(str, s)) if isinstance(s, tuple) else s}"
                              for f, s in shapes.items())
            problems.append((row, f"no full-size mask: no ROI file is {shape[0]}x{shape[1]} like the image "
                                  f"(missing, or of another size) ({found})"))
    if problems:  # one unusable abnormality makes the merged mask incomplete: skip the whole image
        bad = {id(row) for row, _ in problems}
        problems += [(row, "image skipped: another abnormality of this image has no usable mask")
                     for row in rows if id(row) not in bad]
    return full, candidates, problems


def load_mammogram(full: Path, candidates: list[list[Path]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Decode a checked image and one binary mask per abnormality (the first full-size candidate that is binary)."""
    image = read_dicom(full)
    masks = []
    for files in candidates:
        mask = next((m for m in map(read_mask, files) if m is not None), None)
        if mask is None:
            raise DataError(f"{full}: none of its full-size ROI files {[str(f) for f in files]} is a mask (values 0 "
                            "and 255, not all 0); delete or re-download them")
        masks.append(mask)
    return image, masks
