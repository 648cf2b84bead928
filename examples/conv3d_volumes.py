"""A 3-D CNN that tells a solid cube from a solid sphere in a noisy volume.

    python examples/conv3d_volumes.py                          # defaults: 400 volumes, 4 epochs
    python examples/conv3d_volumes.py --samples 40 --epochs 1  # seconds

Each volume (size^3 voxels) holds one shape of random size and position,
with random intensity, plus Gaussian noise; a cube and a sphere of similar
extent differ only at their corners and edges, so the network has to look at
3-D structure. Chance is 1/2. The model is Conv3d -> ReLU -> MaxPool3d twice,
then a linear classifier, trained with Adam through gpucnn.trainer.Trainer (the
GPU's 3-D kernels with --device auto/gpu when usable).
"""
import argparse

import numpy as np

from _common import add_training_arguments, train_and_report
from gpucnn import nn

CLASSES = ("cube", "sphere")


def make_volumes(n, size, noise, rng):
    """x (n, 1, size, size, size) float32 and labels y (n,) int64 (0 cube, 1 sphere)."""
    y = np.arange(n) % 2
    rng.shuffle(y)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), axis=-1) + 0.5  # voxel centres
    x = np.empty((n, size, size, size), np.float32)
    for i in range(n):
        half = rng.uniform(0.2, 0.35) * size             # half side / radius
        centre = rng.uniform(half, size - half, 3)
        offset = np.abs(grid - centre)
        inside = offset.max(axis=-1) <= half if y[i] == 0 else (offset ** 2).sum(axis=-1) <= half ** 2
        x[i] = rng.uniform(0.7, 1.3) * inside
    x += noise * rng.standard_normal(x.shape).astype(np.float32)
    return x[:, None], y.astype(np.int64)


def build_model(size):
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Flatten(), nn.Linear(8 * (size // 4) ** 3, len(CLASSES)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(p, samples=400, epochs=4, batch_size=16, lr=5e-3, noise=0.3,
                           what="volumes")
    p.add_argument("--size", type=int, default=12, help="voxels per side (a multiple of 4)")
    args = p.parse_args(argv)
    if args.size % 4:
        p.error("--size must be a multiple of 4 (two 2x poolings)")

    rng = np.random.default_rng(args.seed)
    x_train, y_train = make_volumes(args.samples, args.size, args.noise, rng)
    x_test, y_test = make_volumes(max(args.samples // 4, 2), args.size, args.noise, rng)
    train_and_report(lambda: build_model(args.size), (x_train, y_train, x_test, y_test), CLASSES, args,
                     f"training volumes of {args.size}^3 voxels", test_batch_size=64)


if __name__ == "__main__":
    main()
