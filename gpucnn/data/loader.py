"""Mini-batches of NumPy arrays with per-epoch shuffling and background prefetch.

The loader stays on the host: it yields NumPy (xb, yb) and the Trainer moves
each whole batch to the GPU in one copy (never sample by sample).
"""
import copy
import queue
import threading

import numpy as np

from .. import random as grandom


class DataLoader:
    """Iterate over (x, y) in batches.

    shuffle: a fresh permutation every epoch (sampling without replacement:
        each sample appears exactly once per epoch).
    drop_last: drop the final batch when it is smaller than batch_size.
    transform: callable(xb, yb, rng) -> (xb, yb), applied per batch (see
        gpucnn.data.transforms); it gets the loader's seeded Generator.
    seed: seeds the shuffling and the transforms. None = each epoch's
        generator is drawn from gpucnn.random's global generator when the
        epoch starts, in the iterating thread: manual_seed makes runs
        repeatable, a training checkpoint's RNG state fixes the order of the
        epochs after a resume, and the prefetch thread never touches the
        global generator.
    prefetch: how many batches a background thread prepares ahead (0 = none).
    sampler: an iterable of sample indices with len() (e.g.
        gpucnn.distributed.DistributedSampler); it then sets each epoch's
        order (and shuffle is not used for it). Call its set_epoch yourself.
    """

    def __init__(self, x, y, batch_size=128, shuffle=True, drop_last=False, transform=None,
                 seed=None, prefetch=2, sampler=None):
        if len(x) != len(y):
            raise ValueError(f"DataLoader: x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be >= 0, got {prefetch}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.transform = transform
        self.prefetch = int(prefetch)
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.sampler = sampler

    def without_transform(self):
        """A loader of the same batches without the transform (it shares this
        one's data, sampler and generator): the Trainer runs the transform on the
        device instead (gpu_augment)."""
        other = copy.copy(self)
        other.transform = None
        return other

    def __len__(self):
        n, b = len(self.x) if self.sampler is None else len(self.sampler), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _epoch_rng(self):
        if self.rng is not None:
            return self.rng
        return np.random.default_rng(int(grandom.generator().integers(2 ** 63)))

    def _batches(self, rng):
        if self.sampler is not None:
            order = np.fromiter(self.sampler, dtype=np.int64)
        else:
            order = rng.permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.shuffle or self.sampler is not None:
                idx = np.sort(idx)  # same set; sorted gathers read memory in order
            xb, yb = self.x[idx], self.y[idx]
            if self.transform is not None:
                xb, yb = self.transform(xb, yb, rng)
            yield xb, yb

    def __iter__(self):
        rng = self._epoch_rng()  # runs at the first next(), in the iterating thread
        if self.prefetch == 0:
            yield from self._batches(rng)
            return
        # A producer thread fills a bounded queue; NumPy releases the GIL in
        # its copies, so batch preparation overlaps with the training step.
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item):  # False once the consumer has gone away
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for item in self._batches(rng):
                    if not put(item):
                        return
                put(done)
            except BaseException as exc:  # re-raised in the consumer
                put(exc)

        thread = threading.Thread(target=produce, daemon=True, name="DataLoader-prefetch")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # consumer stopped early (break, exception, Ctrl-C): release the producer
            stop.set()
            thread.join()
