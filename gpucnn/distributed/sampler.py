"""DistributedSampler: each rank's share of the sample indices, per epoch.

PyTorch's semantics: one permutation of range(n) per (seed + epoch), the same
on every rank (a NumPy Generator here, so the orders differ from PyTorch's
bit for bit); unless drop_last, the list is padded to a multiple of
num_replicas by repeating its head (a few samples then appear twice per
epoch); with drop_last the tail is cut instead. Rank r takes every
num_replicas-th index from position r, so the shards are disjoint (up to the
padding) and together cover every index (up to the cut tail).
"""
import math

import numpy as np


class DistributedSampler:
    def __init__(self, n, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None or rank is None:
            from .world import get_world
            world = get_world()
            num_replicas = world.size if num_replicas is None else num_replicas
            rank = world.rank if rank is None else rank
        n, num_replicas, rank = int(n), int(num_replicas), int(rank)
        if n < 0:
            raise ValueError(f"DistributedSampler: n must be >= 0, got {n}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: need num_replicas >= 1 and 0 <= rank < num_replicas, "
                             f"got num_replicas={num_replicas}, rank={rank}")
        self.n, self.num_replicas, self.rank = n, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        if drop_last and n % num_replicas:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch):
        """Choose the epoch whose permutation the next iteration uses (call it
        before every epoch, on every rank, with the same number)."""
        self.epoch = int(epoch)

    def indices(self):
        """This rank's indices for the current epoch (an int64 array)."""
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.drop_last:
            order = order[:self.total_size]
        elif self.total_size > self.n and self.n:
            order = np.resize(order, self.total_size)   # repeats the head as often as needed
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples
