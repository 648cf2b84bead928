"""Batch-level preprocessing and augmentation on NumPy NCHW float arrays.

Every transform is a callable `t(x, y, rng) -> (x, y)` working on a whole
batch; `rng` is a numpy Generator (the DataLoader passes its seeded one), so
runs are reproducible. Inputs are never modified in place.
MixUp and CutMix turn integer labels into soft labels (N, classes) float32,
which the cross-entropy loss accepts like class indices.
"""
import numpy as np


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
        return ((x - self.mean) / self.std).astype(np.float32)

    def __call__(self, x, y, rng=None):
        return self.apply(x), y

    def __repr__(self):
        return f"Normalize(mean={self.mean.ravel().round(4).tolist()}, std={self.std.ravel().round(4).tolist()})"


class RandomCrop:
    """Zero-pad each side by `padding`, then crop a random window of the original size."""

    def __init__(self, padding=4):
        self.padding = int(padding)

    def __call__(self, x, y, rng):
        p = self.padding
        n, _, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        oy = rng.integers(0, 2 * p + 1, size=n)
        ox = rng.integers(0, 2 * p + 1, size=n)
        out = np.empty_like(x)
        for i in range(n):
            out[i] = padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
        return out, y

    def __repr__(self):
        return f"RandomCrop(padding={self.padding})"


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x, y, rng):
        flip = rng.random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip][..., ::-1]
        return out, y

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class GaussianNoise:
    def __init__(self, std=0.1):
        self.std = float(std)

    def __call__(self, x, y, rng):
        return (x + rng.normal(0.0, self.std, size=x.shape).astype(x.dtype)), y

    def __repr__(self):
        return f"GaussianNoise(std={self.std})"


def _random_boxes(rng, n, h, w, box_h, box_w):
    """Top-left/bottom-right corners of boxes centred anywhere in the image, clipped to it."""
    cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
    y0, x0 = np.clip(cy - box_h // 2, 0, h), np.clip(cx - box_w // 2, 0, w)
    y1, x1 = np.clip(cy - box_h // 2 + box_h, 0, h), np.clip(cx - box_w // 2 + box_w, 0, w)
    return y0, x0, y1, x1


class Cutout:
    """Set a random size x size square (clipped at the border) of each image to zero."""

    def __init__(self, size=8):
        self.size = int(size)

    def __call__(self, x, y, rng):
        n, _, h, w = x.shape
        y0, x0, y1, x1 = _random_boxes(rng, n, h, w, self.size, self.size)
        out = x.copy()
        for i in range(n):
            out[i, :, y0[i]:y1[i], x0[i]:x1[i]] = 0
        return out, y

    def __repr__(self):
        return f"Cutout(size={self.size})"


def _soft_labels(y, num_classes):
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(np.float32)
    return np.eye(num_classes, dtype=np.float32)[y]


class MixUp:
    """x = lam*x + (1-lam)*x[perm], same mix of the one-hot labels; lam ~ Beta(alpha, alpha)."""

    def __init__(self, num_classes, alpha=0.2):
        self.num_classes, self.alpha = int(num_classes), float(alpha)

    def __call__(self, x, y, rng):
        lam = np.float32(rng.beta(self.alpha, self.alpha))
        perm = rng.permutation(len(x))
        t = _soft_labels(y, self.num_classes)
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
        n, _, h, w = x.shape
        lam = rng.beta(self.alpha, self.alpha)
        cut = np.sqrt(1.0 - lam)
        (y0,), (x0,), (y1,), (x1,) = _random_boxes(rng, 1, h, w, int(h * cut), int(w * cut))
        perm = rng.permutation(n)
        out = x.copy()
        out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        kept = np.float32(1.0 - (y1 - y0) * (x1 - x0) / (h * w))
        t = _soft_labels(y, self.num_classes)
        return out, kept * t + (1 - kept) * t[perm]

    def __repr__(self):
        return f"CutMix(alpha={self.alpha})"


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
