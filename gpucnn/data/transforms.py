"""Batch-level preprocessing and augmentation on NCHW float arrays, NumPy or CuPy.

Every transform is a callable `t(x, y, rng) -> (x, y)` working on a whole
batch; `rng` is a numpy Generator (the DataLoader passes its seeded one), so
runs are reproducible. Inputs are never modified in place.
MixUp and CutMix turn integer labels into soft labels (N, classes) float32,
which the cross-entropy loss accepts like class indices.

The transforms are written once in array code against the batch's module
(`backend.get_array_module`): on the CPU they make NumPy's draws in the order
the loop versions made them and give bitwise the same results (tests keep the
loops as the reference); for GPU training (`Trainer(gpu_augment=...)`) the
same code runs on the device batch with draws from a device generator
(gpucnn.data.random_draws: other numbers, same distributions). GPU side:
written for CuPy, not yet run on a GPU.
"""
import numpy as np

from .. import backend
from .random_draws import batch_draws


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, y, rng):
        for t in self.transforms:
            x, y = t(x, y, rng)
        return x, y

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class Normalize:
    """(x - mean) / std per channel, with statistics fitted on the training split.

    Zero-centering makes the first layer's inputs balanced in sign; dividing
    by the per-channel std puts all channels on one scale. Fit on the
    training images only, then apply the same numbers to validation and test.
    """

    def __init__(self, mean, std, eps=1e-7):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1) + np.float32(eps)

    @classmethod
    def fit(cls, x_train):
        x = np.asarray(x_train, dtype=np.float64)
        return cls(x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3)))

    def apply(self, x):
        xp = backend.get_array_module(x)
        return ((x - xp.asarray(self.mean)) / xp.asarray(self.std)).astype(np.float32)

    def __call__(self, x, y, rng=None):
        return self.apply(x), y

    def __repr__(self):
        return f"Normalize(mean={self.mean.ravel().round(4).tolist()}, std={self.std.ravel().round(4).tolist()})"


class RandomCrop:
    """Zero-pad each side by `padding`, then crop a random window of the original size."""

    def __init__(self, padding=4):
        self.padding = int(padding)

    def __call__(self, x, y, rng):
        draws = batch_draws(rng, x, repr(self))
        p = self.padding
        n = x.shape[0]
        oy = draws.integers(2 * p + 1, n)
        ox = draws.integers(2 * p + 1, n)
        return crop(x, oy, ox, p), y

    def __repr__(self):
        return f"RandomCrop(padding={self.padding})"


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x, y, rng):
        flip = batch_draws(rng, x, repr(self)).uniform(len(x)) < self.p
        return flip_where(x, flip), y

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class GaussianNoise:
    def __init__(self, std=0.1):
        self.std = float(std)

    def __call__(self, x, y, rng):
        return x + batch_draws(rng, x, repr(self)).normal(self.std, x.shape, x.dtype), y

    def __repr__(self):
        return f"GaussianNoise(std={self.std})"


def _random_boxes(draws, n, h, w, box_h, box_w):
    """Top-left/bottom-right corners of boxes centred anywhere in the image, clipped to it
    (box_h, box_w: ints, or 0-d integer arrays on the batch's device)."""
    xp = draws.xp
    cy, cx = draws.integers(h, n), draws.integers(w, n)
    y0, x0 = xp.clip(cy - box_h // 2, 0, h), xp.clip(cx - box_w // 2, 0, w)
    y1, x1 = xp.clip(cy - box_h // 2 + box_h, 0, h), xp.clip(cx - box_w // 2 + box_w, 0, w)
    return y0, x0, y1, x1


class Cutout:
    """Set a random size x size square (clipped at the border) of each image to zero."""

    def __init__(self, size=8):
        self.size = int(size)

    def __call__(self, x, y, rng):
        draws = batch_draws(rng, x, repr(self))
        n, _, h, w = x.shape
        inside = box_mask(h, w, *_random_boxes(draws, n, h, w, self.size, self.size))
        return draws.xp.where(inside, draws.xp.zeros((), x.dtype), x), y

    def __repr__(self):
        return f"Cutout(size={self.size})"


def _soft_labels(y, num_classes, what):
    """One-hot float32 rows of class indices (soft labels pass through as float32).
    On NumPy an index outside [0, num_classes) is a ValueError; on the GPU (no
    host read) its row is all zeros."""
    xp = backend.get_array_module(y)
    if y.ndim == 2:
        return y.astype(xp.float32)
    if xp is np and y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{what}: class indices must be in [0, {num_classes}), got {y.min()}..{y.max()}")
    return (y[:, None] == xp.arange(num_classes)).astype(xp.float32)


class MixUp:
    """x = lam*x + (1-lam)*x[perm], same mix of the one-hot labels; lam ~ Beta(alpha, alpha)."""

    def __init__(self, num_classes, alpha=0.2):
        self.num_classes, self.alpha = int(num_classes), float(alpha)

    def __call__(self, x, y, rng):
        draws = batch_draws(rng, x, repr(self))
        lam = draws.beta(self.alpha).astype(np.float32)
        perm = draws.permutation(len(x))
        t = _soft_labels(y, self.num_classes, repr(self))
        return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]

    def __repr__(self):
        return f"MixUp(alpha={self.alpha})"


class CutMix:
    """Paste a random box from x[perm] into x; labels mix by the pasted area share.

    The box has area (1 - lam) * H * W with lam ~ Beta(alpha, alpha); after
    clipping at the border, the label weight is recomputed from the real area.
    """

    def __init__(self, num_classes, alpha=1.0):
        self.num_classes, self.alpha = int(num_classes), float(alpha)

    def __call__(self, x, y, rng):
        draws = batch_draws(rng, x, repr(self))
        xp = draws.xp
        n, _, h, w = x.shape
        cut = xp.sqrt(1.0 - draws.beta(self.alpha))
        # int(h * cut) of a value >= 0, computed where lam lives (no host read on the GPU)
        box_h, box_w = (xp.floor(size * cut).astype(np.int64) for size in (h, w))
        y0, x0, y1, x1 = _random_boxes(draws, 1, h, w, box_h, box_w)
        perm = draws.permutation(n)
        out = xp.where(box_mask(h, w, y0, x0, y1, x1), x[perm], x)
        kept = (1.0 - ((y1 - y0) * (x1 - x0))[0] / (h * w)).astype(np.float32)
        t = _soft_labels(y, self.num_classes, repr(self))
        return out, kept * t + (1 - kept) * t[perm]

    def __repr__(self):
        return f"CutMix(alpha={self.alpha})"


# ---- the array code the transforms share (NumPy or CuPy, by the batch) -------------
def crop(x, oy, ox, padding):
    """out[i] = x[i] zero-padded by `padding`, window at rows oy[i].., columns ox[i].. of x's size."""
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    p = padding
    padded = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    # One gather with four broadcast index arrays (a plain contiguous source: CuPy turns it
    # into one take; a window view of `padded` would be faster on NumPy, but CuPy's
    # multi-array indexing may copy such an overlapping view whole first).
    rows = (oy[:, None] + xp.arange(h))[:, None, :, None]
    cols = (ox[:, None] + xp.arange(w))[:, None, None, :]
    return padded[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None], rows, cols]


def flip_where(x, flip):
    """x with the images where flip[i] mirrored left-right."""
    xp = backend.get_array_module(x)
    return xp.where(flip[:, None, None, None], x[..., ::-1], x)


def box_mask(h, w, y0, x0, y1, x1):
    """(n, 1, h, w) bool: pixel (r, c) lies in box i, y0[i] <= r < y1[i] and x0[i] <= c < x1[i]."""
    xp = backend.get_array_module(y0)
    r = xp.arange(h)[None, :, None]
    c = xp.arange(w)[None, None, :]
    inside = ((r >= y0[:, None, None]) & (r < y1[:, None, None])
              & (c >= x0[:, None, None]) & (c < x1[:, None, None]))
    return inside[:, None]


AUGMENTATIONS = ("crop", "flip", "noise", "cutout", "mixup", "cutmix")


def build_augmentation(names, num_classes, image_size):
    """A Compose of the named augmentations (AUGMENTATIONS), in the order given, or None."""
    table = {
        "crop": lambda: RandomCrop(padding=max(1, image_size // 8)),
        "flip": lambda: RandomHorizontalFlip(),
        "noise": lambda: GaussianNoise(std=0.1),
        "cutout": lambda: Cutout(size=max(2, image_size // 4)),
        "mixup": lambda: MixUp(num_classes),
        "cutmix": lambda: CutMix(num_classes),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {AUGMENTATIONS}")
    return Compose([table[n]() for n in names]) if names else None
