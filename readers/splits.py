"""How every dataset is split (thesis §4.1, Table 1's train and validation images): by patient, or
any group of images that must stay together, with a fixed seed; and a cross-validation's folds.
A split depends on the group ids and the seed alone, never on which files are on disk; a group
added later (a new patient's images) moves at most one other group across each cut.

    held_out = groups_of_split(strata, "val", (), seed=0, fold=2, folds=5)  # fold 2 of 5
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .mammograms import DataError

SPLITS = ("train", "val", "test")


def groups_in_part(groups, part: int, weights: Sequence[float], seed: int) -> set:
    """Part `part` of the groups, in an order drawn with `seed` and cut in proportion to `weights`.
    Each group's place in the order is a hash of (seed, group) alone, not a shuffle of them all:
    a new group slides in among the others, which keep their order."""
    place = lambda group: hashlib.sha256(f"{seed}:{group}".encode()).digest()  # not hash(): salted
    order = sorted(set(groups), key=place)
    bounds = [0, *np.round(np.cumsum(weights) / sum(weights) * len(order)).astype(int).tolist()]
    return set(order[bounds[part]:bounds[part + 1]])


def groups_of_split(strata: dict, split: str, weights: Sequence[float], seed: int,
                    fold: int | None, folds: int) -> set:
    """The groups (strata's keys) of train/val/test by `weights`, or with fold k of K: "val" the
    k-th of K equal parts, "train" the others."""
    weights, part = ((1,) * folds, fold) if fold is not None else (weights, SPLITS.index(split))
    chosen = set()
    for stratum in sorted(set(strata.values())):  # each cut alike: every part gets its share
        groups = [g for g, s in strata.items() if s == stratum]
        chosen |= groups_in_part(groups, part, weights, seed)
    return set(strata) - chosen if fold is not None and split == "train" else chosen


def check_fold(name: str, split: str, fold: int | None, folds: int) -> None:
    if fold is not None and (split not in ("train", "val") or not 0 <= fold < folds or folds < 2):
        raise DataError(f"{name}: fold {fold} of {folds} folds, split {split!r}: cross-validation "
                        "needs 2 or more folds, fold 0..folds-1, and split train or val (the other "
                        "folds, or the held-out one)")
