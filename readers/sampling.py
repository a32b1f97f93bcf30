"""Deterministic training streams (§4.3's training, repeatable): each process's items per epoch and
each item's augmentation seed, a function of (seed, epoch, index) whatever the workers or resumes.

    loader = DataLoader(SeededItems(data, seed), batch_size=16, sampler=EpochSampler(data, 2, 0))
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def seed_for(*numbers: int) -> int:
    """A 63-bit seed mixing several integers (numpy's SeedSequence), e.g. (seed, epoch, index)."""
    state = np.random.SeedSequence(list(numbers)).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class EpochSampler(DistributedSampler):
    """DistributedSampler yielding (epoch, index): workers never see set_epoch (persistent ones
    keep an old copy of the dataset), so the epoch travels with the index."""

    skip = 0  # indices of this epoch already trained on (resumed mid-epoch): whole batches

    def __iter__(self):
        return ((self.epoch, index) for index in list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SeededItems(Dataset):
    """Item (epoch, index) of `dataset`, drawn with torch's RNG seeded from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
            torch.manual_seed(seed_for(self.seed, epoch, index))
            return self.dataset[index]
