"""A 1-D CNN that tells sine, square and sawtooth waves apart in noise.

    python examples/conv1d_signals.py                          # defaults: ~1200 signals, 6 epochs
    python examples/conv1d_signals.py --samples 150 --epochs 1 # seconds

Each signal is one of the three waveforms with a random frequency (1.5 to 4
periods over the window), phase and amplitude, plus Gaussian noise; chance is
1/3. The model is Conv1d -> ReLU -> MaxPool1d twice, then a linear classifier,
trained with Adam through gpucnn.trainer.Trainer (GPU when usable with
--device auto; the GPU path runs the 2-D kernels with unit height).
"""
import argparse

import numpy as np

from _common import add_training_arguments, train_and_report
from gpucnn import nn

CLASSES = ("sine", "square", "sawtooth")


def make_signals(n, length, noise, rng):
    """x (n, 1, length) float32 and labels y (n,) int64 in 0..2, balanced."""
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    t = np.arange(length) / length
    periods = rng.uniform(1.5, 4.0, (n, 1))
    phase = rng.uniform(0.0, 1.0, (n, 1))
    amplitude = rng.uniform(0.6, 1.4, (n, 1))
    cycle = (periods * t + phase) % 1.0                     # position within the period, [0, 1)
    waves = np.stack([np.sin(2 * np.pi * cycle),           # sine
                      np.where(cycle < 0.5, 1.0, -1.0),     # square
                      2.0 * cycle - 1.0])                   # sawtooth
    x = amplitude * waves[y, np.arange(n)] + noise * rng.standard_normal((n, length))
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


def build_model(length):
    return nn.Sequential(
        nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Flatten(), nn.Linear(16 * (length // 4), len(CLASSES)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(p, samples=1200, epochs=6, batch_size=32, lr=3e-3, noise=0.4,
                           what="signals")
    p.add_argument("--length", type=int, default=64, help="samples per signal (a multiple of 4)")
    args = p.parse_args(argv)
    if args.length % 4:
        p.error("--length must be a multiple of 4 (two 2x poolings)")

    rng = np.random.default_rng(args.seed)
    x_train, y_train = make_signals(args.samples, args.length, args.noise, rng)
    x_test, y_test = make_signals(max(args.samples // 4, 3), args.length, args.noise, rng)
    train_and_report(lambda: build_model(args.length), (x_train, y_train, x_test, y_test), CLASSES, args,
                     f"training signals of length {args.length}", test_batch_size=256)


if __name__ == "__main__":
    main()
