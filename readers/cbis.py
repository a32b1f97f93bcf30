"""CBIS-DDSM as TCIA publishes it (thesis §4.1): the case-description CSVs, the NBIA retriever's
two folder layouts, and which file is each abnormality's mask (by size and content, never by name).
Train/val split the training CSV 80/20 by patient (Table 1's split: docs/reproduce.md).

    full, candidates, skipped = check_mammogram(CbisTree(root), cbis_images(root, "train")[key])
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .mammograms import DataError, dicom_shape, open_csv, read_dicom
from .splits import groups_in_part

CSV_NAMES = {  # (abnormality, official split) -> file name as TCIA publishes it
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calcification", "train"): "calc_case_description_train_set.csv",
    ("calcification", "test"): "calc_case_description_test_set.csv",
}
CSV_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id",
               "image file path", "cropped image file path", "ROI mask file path")
MASK_STRAY_FRACTION = 0.01  # of a mask's non-zero pixels, the most that may lie below its maximum


def read_mask(path: Path) -> np.ndarray | None:
    """A CBIS ROI mask as (H, W) bool (above half the maximum), or None if the file is no mask."""
    values = read_dicom(path)
    top = values.max()
    lit = np.count_nonzero(values)
    # A mask holds 0 and 255, give or take a few stray values; an empty file or an image is no mask.
    if top == 0 or lit - np.count_nonzero(values == top) > MASK_STRAY_FRACTION * lit:
        return None
    return values > top / 2


# ------------------------------------------------------ Case-description CSVs and the patient split

def read_case_rows(path: Path) -> list[dict]:
    """Rows of one case-description CSV, every header and cell stripped, plus 'row' and 'csv'."""
    if not path.is_file():
        raise DataError(f"{path}: CBIS-DDSM case-description CSV not found; download the four CSVs "
                        "from the TCIA CBIS-DDSM page into the data root (--data-root)")
    with open_csv(path) as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in CSV_COLUMNS if name not in header]
        if missing:
            raise DataError(f"{path}: columns {missing} missing; use the original TCIA CSV (some "
                            "copies rename them)")
        rows = []
        for number, cells in enumerate(reader, start=1):
            if not any(cell.strip() for cell in cells):  # blank lines, e.g. at the end of the file
                continue
            # stripped: the mass CSVs end every ROI mask path with a newline inside the quotes
            row = {name: cell.strip() for name, cell in zip(header, cells)}
            if not all(row.get(name) for name in CSV_COLUMNS):
                raise DataError(f"{path}: row {number} has empty or missing cells in "
                                f"{list(CSV_COLUMNS)}")
            rows.append(dict(row, row=number, csv=path.name))
    return rows


def subject_of(csv_path: str) -> str:
    """First component of a CSV file path: the subject (one image, or one abnormality's ROIs)."""
    return csv_path.replace("\\", "/").split("/")[0]


def cbis_images(csv_dir: str | os.PathLike, split: str, *, abnormality: str = "mass",
                val_fraction: float = 0.2, split_seed: int = 0) -> dict[str, list[dict]]:
    """{image id (subject): its CSV rows, one per abnormality}, sorted, for train, val or test."""
    if abnormality not in ("mass", "calcification"):
        raise DataError(f"cbis: abnormality must be 'mass' or 'calcification', got {abnormality!r}")
    official = "test" if split == "test" else "train"
    rows = read_case_rows(Path(csv_dir) / CSV_NAMES[abnormality, official])
    if split != "test":
        patients = [row["patient_id"] for row in rows]
        # the first 20% of the patients
        validation = groups_in_part(patients, 0, (val_fraction, 1 - val_fraction), split_seed)
        rows = [row for row in rows if (row["patient_id"] in validation) == (split == "val")]
    images: dict[str, list[dict]] = {}
    for row in rows:  # several abnormalities of one image share its subject id
        images.setdefault(subject_of(row["image file path"]), []).append(row)
    return dict(sorted(images.items()))


# -------------------------------------------------------------------------------- The download tree

class CbisTree:
    """A subject's DICOM files, in the classic layout <root>/<subject>/<study UID>/<series UID>/
    or the retriever's current CBIS-DDSM/<subject>/<date>-DDSM-<n>/<series>/1-1.dcm."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: CBIS-DDSM data root not found; pass the folder holding "
                            "the DICOM tree")
        self.folders: dict[str, list[Path]] = {}  # subject -> series folders, from metadata.csv
        # DOI/: older retriever versions
        self.bases = [self.root, self.root / "CBIS-DDSM", self.root / "DOI"]
        for metadata in [self.root / "metadata.csv", *sorted(self.root.glob("*/metadata.csv"))]:
            if metadata.is_file():
                self._read_metadata(metadata)
                self.bases += [metadata.parent, metadata.parent / "CBIS-DDSM"]

    def _read_metadata(self, path: Path) -> None:
        with open_csv(path) as file:
            reader = csv.reader(file)
            # The retriever writes "Subject ID,...,File Location"; some tools rewrite them as
            # subject_id, file_location.
            header = [name.strip().lower().replace(" ", "_") for name in next(reader, [])]
            if "subject_id" not in header or "file_location" not in header:
                raise DataError(f"{path}: no 'Subject ID'/'File Location' columns; is this the "
                                "NBIA retriever's metadata.csv?")
            subject, location = header.index("subject_id"), header.index("file_location")
            for cells in reader:
                if len(cells) > max(subject, location):
                    relative = cells[location].strip().replace("\\", "/").removeprefix("./")
                    folders = self.folders.setdefault(cells[subject].strip(), [])
                    folders.append(path.parent / relative)

    def relative(self, path: Path) -> str:
        """`path` as the user sees it under the data root."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def files(self, subject: str) -> list[Path]:
        """All .dcm files of a subject, sorted; empty if the subject is not on disk."""
        folders = self.folders.get(subject) or [base / subject for base in self.bases]
        return sorted({file for folder in folders if folder.is_dir()
                       for file in folder.rglob("*.dcm")})


def _full_image(files: list[Path], csv_path: str) -> Path | None:
    """The full mammogram among a subject's files; several (merged downloads) told by series UID."""
    if len(files) == 1:
        return files[0]
    # the classic folder name, or its last 5 digits in the current one
    series = csv_path.replace("\\", "/").split("/")[-2]
    matches = [f for f in files if series in f.parts or f.parent.name.endswith("-" + series[-5:])]
    # one file, or copies of it in downloads that named the series folder otherwise (a full image's
    # series holds one image); two files in one folder of the series cannot be told apart
    if matches and len({f.parent for f in matches}) == len(matches):
        return matches[0]
    return None


def check_mammogram(tree: CbisTree, rows: list[dict]
                    ) -> tuple[Path, list[list[Path]], list[tuple[dict, str]]]:
    """From headers only: (full image, mask candidates per row, skipped (row, 'kind: detail'));
    an image with any skipped row must not be used."""
    image_path = rows[0]["image file path"]
    files = tree.files(subject_of(image_path))
    full = _full_image(files, image_path)
    if full is None:
        reason = (f"full mammogram ambiguous: {len(files)} DICOM files, not one alone in series "
                  f"{image_path.split('/')[-2]}" if files else
                  f"full mammogram missing: no DICOM for {subject_of(image_path)}")
        return Path(), [], [(row, reason) for row in rows]
    try:
        shape = dicom_shape(full)
    except DataError as error:
        return full, [], [(row, f"full mammogram unusable: {error}") for row in rows]
    candidates, problems = [], []
    for row in rows:
        subjects = {subject_of(row["ROI mask file path"]),
                    subject_of(row["cropped image file path"])}
        files = sorted({file for subject in subjects for file in tree.files(subject)})
        shapes = {}
        for file in files:
            try:
                shapes[file] = dicom_shape(file)
            except DataError as error:
                shapes[file] = str(error)
        # The mask has the full image's size (crops are small); the CSV's crop and mask columns and
        # the file names are swapped in hundreds of rows, so names are never trusted.
        masks = [file for file in files if shapes[file] == shape]
        candidates.append(masks)
        if not files:
            problems.append((row, "ROI files missing: no DICOM for "
                                  f"{' or '.join(sorted(subjects))}"))
        elif not masks:
            found = "; ".join(f"{tree.relative(f)} "
                              f"{'x'.join(map(str, s)) if isinstance(s, tuple) else s}"
                              for f, s in shapes.items())
            problems.append((row, f"no full-size mask: no ROI file is {shape[0]}x{shape[1]} like "
                                  f"the image (missing, or of another size) ({found})"))
    if problems:  # a mask missing one lesion would be silently wrong: skip the whole image
        bad = {id(row) for row, _ in problems}
        problems += [(row, "image skipped: another abnormality of this image has no usable mask")
                     for row in rows if id(row) not in bad]
    return full, candidates, problems


def load_mammogram(full: Path, candidates: list[list[Path]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Decode a checked image and one mask per abnormality (its first full-size binary file)."""
    image = read_dicom(full)
    masks = []
    for files in candidates:
        mask = next((m for m in map(read_mask, files) if m is not None), None)
        if mask is None:
            raise DataError(f"{full}: none of its full-size ROI files {[str(f) for f in files]} is "
                            "a mask (values 0 and 255, not all 0); delete or re-download them")
        masks.append(mask)
    return image, masks
