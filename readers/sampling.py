"""Deterministic training streams (§4.3's training, made repeatable): which item each process sees in each epoch, and
the seed of each item's augmentation. Randomness has no hidden state: SeededItems seeds torch's RNG from (seed, epoch,
index) for every item, and EpochSampler carries the epoch with each index, so a resumed run and any number of
DataLoader workers or torchrun processes see the same stream.

    loader = DataLoader(SeededItems(train_set, seed), batch_size=16, sampler=EpochSampler(train_set, world, rank))
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def seed_for(*numbers: int) -> int:
    """A 63-bit seed mixing several integers (numpy's SeedSequence), e.g. (seed, epoch, index)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochSampler(DistributedSampler):
    """DistributedSampler yielding (epoch, index): workers cannot see set_epoch (persistent ones keep an old copy
    of the dataset), so the epoch travels with the index."""

    skip = 0  # indices of this epoch already trained on (a run resumed mid-epoch): a whole number of batches

    def __iter__(self):
        return ((self.epoch, index) for index in list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SeededItems(Dataset):
    """Item (epoch, index) of `dataset`, drawn with torch's RNG seeded from (seed, epoch, index): augmentations are
    a pure function of those, whatever the workers, processes or resumes. The caller's RNG state is left as it was."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(self.seed, epoch, index))
            return self.dataset[index]
