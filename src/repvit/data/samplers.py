"""Samplers the training loops share: exact sharded evaluation, resuming in the middle of an epoch."""

from __future__ import annotations

from torch.utils.data import Sampler

__all__ = ["ShardSampler", "ResumeSampler"]


class ShardSampler(Sampler):
    """Evaluation sharding without padding: rank r takes samples r, r+W, r+2W, ... (exact metrics)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class ResumeSampler(Sampler):
    """An epoch's order from position ``skip`` on (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return len(self.sampler) - self.skip
