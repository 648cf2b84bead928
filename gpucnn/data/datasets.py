"""Named datasets as float32 NCHW images in [0, 1] with int64 labels.

    load_dataset("auto")           Fashion-MNIST from the Debian package
                                   dataset-fashion-mnist when present, else
                                   scikit-learn's bundled 8x8 digits
    load_dataset("fashion-mnist" | "mnist", data_dir)   IDX files (gz or raw)
    load_dataset("digits")         scikit-learn's 8x8 digits (no download)
    load_dataset("cifar10", dir)   CIFAR-10 python batches (cifar-10-batches-py)
    load_dataset("npz", file)      arrays x, y (and optionally x_test, y_test)
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import readers

DATASETS = ("auto", "fashion-mnist", "mnist", "digits", "cifar10", "npz")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(c) for c in range(10))  # digits and MNIST: the digit itself
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
              "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
HELD_OUT_FRACTION = 0.2  # test share for sources without their own test split


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    source: str = ""     # where it was read from, for the user
    notes: list = field(default_factory=list)

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.classes)


def _to_float_nchw(x, what):
    """uint8/integer images scaled by 1/255; float images kept; (N, H, W) gets C=1."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{what}: expected images of shape (N, H, W) or (N, C, H, W), got {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        return (x.astype(np.float32) / np.float32(255.0))
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y, what):
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: expected integer class labels of shape (N,), got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _find_idx(data_dir, stem):
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"{data_dir}: expected {stem}.gz (or {stem}) for an MNIST-format dataset")


def load_idx_dir(data_dir, name, classes):
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: directory not found (expected the {name} IDX files "
                                f"{', '.join(v + '.gz' for v in _IDX_FILES.values())})")
    paths = {k: _find_idx(data_dir, stem) for k, stem in _IDX_FILES.items()}
    arrays = {k: (readers.read_idx_images if k[0] == "x" else readers.read_idx_labels)(p)
              for k, p in paths.items()}
    for split in ("train", "test"):
        nx, ny = len(arrays["x_" + split]), len(arrays["y_" + split])
        if nx != ny:
            raise ValueError(f"{paths['x_' + split]}: {nx} images but {paths['y_' + split]} has {ny} labels")
    y_max = max(arrays["y_train"].max(), arrays["y_test"].max())
    if y_max >= len(classes):
        raise ValueError(f"{data_dir}: label {y_max} out of range for {len(classes)} classes")
    return Dataset(name, _to_float_nchw(arrays["x_train"], paths["x_train"]), arrays["y_train"].astype(np.int64),
                   _to_float_nchw(arrays["x_test"], paths["x_test"]), arrays["y_test"].astype(np.int64),
                   tuple(classes), source=str(data_dir))


def _held_out_split(x, y, seed=0):
    """A fixed, seeded train/test split for sources that ship only one set."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * HELD_OUT_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits():
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise ImportError("the 'digits' dataset comes from scikit-learn, which is not installed "
                          "(pip install scikit-learn), and Fashion-MNIST was not found either; "
                          "pass --dataset fashion-mnist --data-dir DIR") from exc
    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None]  # pixel values 0..16
    x_tr, y_tr, x_te, y_te = _held_out_split(x, bunch.target.astype(np.int64))
    return Dataset("digits", x_tr, y_tr, x_te, y_te, DIGIT_CLASSES,
                   source="scikit-learn bundled 8x8 digits",
                   notes=[f"held-out test split: {HELD_OUT_FRACTION:.0%} of 1797 images, seed 0"])


def load_cifar10(data_dir):
    data_dir = Path(data_dir)
    if (data_dir / "cifar-10-batches-py").is_dir():
        data_dir = data_dir / "cifar-10-batches-py"
    train = [readers.read_cifar10_batch(data_dir / f"data_batch_{i}") for i in range(1, 6)]
    x_te, y_te = readers.read_cifar10_batch(data_dir / "test_batch")
    x_tr = np.concatenate([b[0] for b in train])
    y_tr = np.concatenate([b[1] for b in train])
    return Dataset("cifar10", _to_float_nchw(x_tr, data_dir), y_tr, _to_float_nchw(x_te, data_dir), y_te,
                   CIFAR10_CLASSES, source=str(data_dir))


def load_npz(path):
    path = Path(path)
    arrays = readers.read_npz(path)
    x, y = _to_float_nchw(arrays["x"], f"{path}['x']"), _labels(arrays["y"], f"{path}['y']")
    notes = []
    if "x_test" in arrays:
        x_te = _to_float_nchw(arrays["x_test"], f"{path}['x_test']")
        y_te = _labels(arrays["y_test"], f"{path}['y_test']")
        if x_te.shape[1:] != x.shape[1:]:
            raise ValueError(f"{path}: x_test images {x_te.shape[1:]} differ from x images {x.shape[1:]}")
    else:
        x, y, x_te, y_te = _held_out_split(x, y)
        notes.append(f"no x_test/y_test: held out {HELD_OUT_FRACTION:.0%} of x as the test split (seed 0)")
    if y.min() < 0:
        raise ValueError(f"{path}: negative class labels")
    n_classes = int(max(y.max(), y_te.max())) + 1
    return Dataset("npz", x, y, x_te, y_te, tuple(str(c) for c in range(n_classes)),
                   source=str(path), notes=notes)


def load_dataset(name="auto", data_dir=None):
    """Load a dataset by name (see the module docstring); data_dir overrides the default place."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if name == "auto":
        if data_dir is not None:
            return load_idx_dir(data_dir, "fashion-mnist", FASHION_MNIST_CLASSES)
        if FASHION_MNIST_DIR.is_dir():
            return load_idx_dir(FASHION_MNIST_DIR, "fashion-mnist", FASHION_MNIST_CLASSES)
        ds = load_digits()
        ds.notes.insert(0, f"Fashion-MNIST not found at {FASHION_MNIST_DIR} (install the Debian package "
                           "dataset-fashion-mnist, or pass --data-dir); using scikit-learn's 8x8 digits")
        return ds
    if name == "fashion-mnist":
        return load_idx_dir(data_dir or FASHION_MNIST_DIR, name, FASHION_MNIST_CLASSES)
    if name == "digits":
        return load_digits()
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir (the {'.npz file' if name == 'npz' else 'directory'})")
    if name == "mnist":
        return load_idx_dir(data_dir, name, DIGIT_CLASSES)
    if name == "cifar10":
        return load_cifar10(data_dir)
    return load_npz(data_dir)


def train_val_split(x, y, val_fraction, seed=0):
    """A seeded random split of (x, y) into (x_train, y_train, x_val, y_val).

    Each class keeps its share in both parts (stratified), so small
    validation sets still see every class.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        val_idx.append(members[:int(round(len(members) * val_fraction))])
    val_mask = np.zeros(len(y), dtype=bool)
    val_mask[np.concatenate(val_idx)] = True
    if val_mask.all() or not val_mask.any():
        raise ValueError(f"val_fraction {val_fraction} leaves an empty split for {len(y)} samples")
    return x[~val_mask], y[~val_mask], x[val_mask], y[val_mask]
