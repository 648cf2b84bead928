"""gpucnn.data: readers (with malformed files), datasets, loader, transforms."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from gpucnn.data import (CutMix, Cutout, DataLoader, GaussianNoise, MixUp, Normalize, RandomCrop,
                         RandomHorizontalFlip, build_augmentation, load_dataset, read_cifar10_batch,
                         read_idx, read_idx_images, read_idx_labels, read_npz, train_val_split)


def idx_bytes(array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_dir(d, n_train=12, n_test=5, gz=True, size=28):
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size)),
             "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size)),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, arr in files.items():
        data = idx_bytes(arr)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return files


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    files = write_idx_dir(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    images = read_idx_images(tmp_path / ("train-images-idx3-ubyte" + suffix))
    np.testing.assert_array_equal(images, files["train-images-idx3-ubyte"])
    labels = read_idx_labels(tmp_path / ("t10k-labels-idx1-ubyte" + suffix))
    np.testing.assert_array_equal(labels, files["t10k-labels-idx1-ubyte"])


def test_idx_wrong_magic_names_path(tmp_path):
    p = tmp_path / "labels"
    p.write_bytes(idx_bytes(np.zeros(4)))
    with pytest.raises(ValueError, match=r"labels.*magic.*0x00000801.*expected 0x00000803"):
        read_idx_images(p)
    p.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(p)


def test_idx_truncated_and_trailing(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4)))
    p = tmp_path / "imgs.gz"
    p.write_bytes(gzip.compress(good[:-5]))
    with pytest.raises(ValueError, match=r"imgs.gz.*truncated.*43 bytes, expected 48"):
        read_idx_images(p)
    p.write_bytes(gzip.compress(good + b"\x00"))
    with pytest.raises(ValueError, match="trailing data"):
        read_idx_images(p)
    p.write_bytes(gzip.compress(good)[:-10])  # a cut gzip stream
    with pytest.raises(ValueError, match="imgs.gz.*gzip"):
        read_idx_images(p)
    p.write_bytes(good[:10])  # header cut inside the dims
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx_images(p)


def test_fashion_mnist_dir_count_mismatch(tmp_path):
    write_idx_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(11))))
    with pytest.raises(ValueError, match=r"12 images but .*train-labels-idx1-ubyte.gz has 11 labels"):
        load_dataset("fashion-mnist", tmp_path)


def test_missing_dir_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def test_idx_dataset_is_float_nchw(tmp_path):
    files = write_idx_dir(tmp_path, gz=False)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.x_test.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, files["train-images-idx3-ubyte"], atol=1e-4)
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1


def fake_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"fake", b"labels": rng.integers(0, 10, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * n}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return batch


def test_cifar10_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batches = [fake_cifar_batch(d / f"data_batch_{i}", 4, i) for i in range(1, 6)]
    fake_cifar_batch(d / "test_batch", 3, 9)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    # CIFAR rows are channel-major: the first 1024 values are the red plane
    np.testing.assert_allclose(ds.x_train[0, 0].ravel() * 255, batches[0][b"data"][0, :1024], atol=1e-3)
    assert ds.y_train.tolist()[:4] == batches[0][b"labels"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_refuses_code(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load global"):
        read_cifar10_batch(p)


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 3, 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset("npz", tmp_path / "d.npz")
    assert ds.x_train.shape == (40, 1, 8, 8) and ds.x_test.shape == (10, 1, 8, 8)
    assert len(ds.classes) == 3 and ds.notes
    np.savez(tmp_path / "bad.npz", x=x, z=y)
    with pytest.raises(ValueError, match=r"bad.npz.*missing \['y'\]"):
        read_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(ValueError, match="obj.npz"):
        read_npz(tmp_path / "obj.npz")


def test_auto_uses_fashion_mnist_or_digits():
    pytest.importorskip("sklearn")
    ds = load_dataset("auto")
    assert ds.name in ("fashion-mnist", "digits")
    assert ds.x_train.ndim == 4 and len(ds.x_train) == len(ds.y_train)
    if ds.name == "digits":
        assert "Fashion-MNIST not found" in ds.notes[0]
    digits = load_dataset("digits")
    assert digits.input_shape == (1, 8, 8) and len(digits.x_train) + len(digits.x_test) == 1797


def test_train_val_split_stratified():
    y = np.repeat(np.arange(4), 25)
    x = np.arange(100)
    xt, yt, xv, yv = train_val_split(x, y, 0.2, seed=1)
    assert sorted(np.concatenate([xt, xv]).tolist()) == list(range(100))
    assert np.bincount(yv).tolist() == [5, 5, 5, 5]
    with pytest.raises(ValueError):
        train_val_split(x, y, 1.5)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_epochs_cover_without_replacement(prefetch):
    x = np.arange(103, dtype=np.float32).reshape(103, 1, 1, 1)
    loader = DataLoader(x, np.arange(103), batch_size=10, seed=3, prefetch=prefetch)
    assert len(loader) == 11
    epochs = []
    for _ in range(2):
        seen = [yb for _, yb in loader]
        assert [len(b) for b in seen] == [10] * 10 + [3]
        flat = np.concatenate(seen)
        assert sorted(flat.tolist()) == list(range(103))
        epochs.append(flat)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
    assert len(DataLoader(x, x, 10, drop_last=True)) == 10
    assert sum(len(b) for _, b in DataLoader(x, np.arange(103), 10, drop_last=True)) == 100


def test_loader_seeded_and_errors_propagate():
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    a = [yb.tolist() for _, yb in DataLoader(x, np.arange(40), 8, seed=5)]
    b = [yb.tolist() for _, yb in DataLoader(x, np.arange(40), 8, seed=5)]
    assert a == b

    def broken(xb, yb, rng):
        raise RuntimeError("bad transform")
    with pytest.raises(RuntimeError, match="bad transform"):
        list(DataLoader(x, np.arange(40), 8, transform=broken))
    it = iter(DataLoader(x, np.arange(40), 1, prefetch=1))
    next(it)
    it.close()  # stopping early must not hang the producer thread
    with pytest.raises(ValueError, match="40 samples but y has 3"):
        DataLoader(x, np.arange(3))


def test_normalize_uses_given_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (200, 2, 4, 4)).astype(np.float32)
    norm = Normalize.fit(x)
    z = norm.apply(x)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)
    other = norm.apply(x[:10] + 1)  # the same numbers for another split
    np.testing.assert_allclose(other, (x[:10] + 1 - x.mean((0, 2, 3), keepdims=True)) /
                               x.std((0, 2, 3), keepdims=True), rtol=1e-4, atol=1e-5)


def test_geometric_transforms(rng):
    x = rng.random((16, 2, 6, 6)).astype(np.float32)
    y = np.arange(16)
    xc, yc = RandomCrop(padding=2)(x, y, np.random.default_rng(1))
    assert xc.shape == x.shape and yc is y
    for i in range(16):  # each crop is a shifted window of the zero-padded image
        padded = np.pad(x[i], ((0, 0), (2, 2), (2, 2)))
        assert any(np.array_equal(xc[i], padded[:, a:a + 6, b:b + 6]) for a in range(5) for b in range(5))
    xf, _ = RandomHorizontalFlip(p=1.0)(x, y, rng)
    np.testing.assert_array_equal(xf, x[..., ::-1])
    xn, _ = RandomHorizontalFlip(p=0.0)(x, y, rng)
    np.testing.assert_array_equal(xn, x)
    xo, _ = Cutout(size=2)(x + 1, y, rng)
    zeros = (xo == 0).all(axis=1).sum(axis=(1, 2))
    assert ((zeros >= 1) & (zeros <= 4)).all()
    xg, _ = GaussianNoise(std=0.5)(np.zeros((64, 1, 8, 8), np.float32), y, rng)
    assert abs(xg.std() - 0.5) < 0.05 and xg.dtype == np.float32


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_mixing_produces_soft_labels(cls, rng):
    x = rng.random((32, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 32)
    xm, ym = cls(num_classes=5, alpha=1.0)(x, y, np.random.default_rng(2))
    assert xm.shape == x.shape and ym.shape == (32, 5) and ym.dtype == np.float32
    np.testing.assert_allclose(ym.sum(axis=1), 1, rtol=1e-6)
    assert (ym[np.arange(32), y] > 0).all()  # every sample keeps part of its own label
    assert not np.array_equal(xm, x)


def test_build_augmentation():
    aug = build_augmentation(["crop", "flip", "mixup"], 10, 28)
    x = np.zeros((4, 1, 28, 28), np.float32)
    xb, yb = aug(x, np.arange(4), np.random.default_rng(0))
    assert xb.shape == x.shape and yb.shape == (4, 10)
    assert build_augmentation([], 10, 28) is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augmentation(["rotate"], 10, 28)
