"""How every dataset is split (thesis §4.1, Table 1's train and validation images): by patient, or any group of
images that must stay together, with a fixed seed; and the folds of a cross-validation.

A split is a function of the group ids and the seed alone, never of which files are on disk, so a missing or skipped
file never moves another patient to another side. Strata (e.g. patients with a mass, and the others) are cut alike,
so every part gets its share of each.

    val_patients = groups_in_part(patients, 0, (0.2, 0.8), seed=0)           # CBIS-DDSM's 80/20 of its training CSV
    held_out = groups_of_split(strata, "val", (), seed=0, fold=2, folds=5)   # fold 2 of a 5-fold cross-validation
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .mammograms import DataError

SPLITS = ("train", "val", "test")


def groups_in_part(groups, part: int, weights: Sequence[float], seed: int) -> set:
    """The groups of part `part` when the sorted groups are shuffled with `seed` and cut in proportion to `weights`:
    a split depends on the group ids alone, never on which files are present."""
    order = np.random.default_rng(seed).permutation(sorted(set(groups)))
    cuts = np.round(np.cumsum(weights) / sum(weights) * len(order)).astype(int)
    return set(np.split(order, cuts[:-1])[part].tolist())


def groups_of_split(strata: dict, split: str, weights: Sequence[float], seed: int, fold: int | None,
                    folds: int) -> set:
    """The groups of `split` among strata's keys (group -> stratum; each stratum is cut alike, so every part gets its
    share of, say, patients with a lesion). Without a fold: part train/val/test of `weights`. With fold k of K (cross-
    validation): "val" is the k-th of K equal parts, "train" the others."""
    weights, part = ((1,) * folds, fold) if fold is not None else (weights, SPLITS.index(split))
    chosen = set()
    for stratum in sorted(set(strata.values())):
        chosen |= groups_in_part([g for g, s in strata.items() if s == stratum], part, weights, seed)
    return set(strata) - chosen if fold is not None and split == "train" else chosen


def check_fold(name: str, split: str, fold: int | None, folds: int) -> None:
    if fold is not None and (split not in ("train", "val") or not 0 <= fold < folds or folds < 2):
        raise DataError(f"{name}: fold {fold} of {folds} folds, split {split!r}: cross-validation needs 2 or more "
                        "folds, fold 0..folds-1, and split train or val (the other folds, or the held-out one)")
