"""Write your own layer and check its backward with gpucnn.gradcheck.

The layer: Swish with a learnable slope per channel,
    y = x * sigmoid(beta_c * x)
    dy/dx     = s + beta x s (1 - s)        s = sigmoid(beta x)
    dy/dbeta  = x^2 s (1 - s)               (summed over batch and positions)
gradcheck compares this backward with central differences in float64.
`--broken` drops the second term of dy/dx to show what a failing check looks like.

    python examples/gradcheck_custom_layer.py
    python examples/gradcheck_custom_layer.py --broken    # exits with status 1
"""
import argparse

import numpy as np

from gpucnn import backend
from gpucnn.gradcheck import gradcheck
from gpucnn.nn import Module, Parameter


class LearnableSwish(Module):
    def __init__(self, channels, broken=False):
        super().__init__()
        self.beta = Parameter(np.ones(channels, dtype=np.float32))
        self.broken = broken

    def forward(self, x):
        xp = backend.get_array_module(x)
        beta = self.beta.data.reshape(1, -1, *([1] * (x.ndim - 2)))
        s = 1 / (1 + xp.exp(-beta * x))
        self.cache = (x, s, beta)
        return x * s

    def backward(self, dout):
        x, s, beta = self.cache
        ds = s * (1 - s)
        reduce_axes = (0,) + tuple(range(2, x.ndim))
        dbeta = (dout * x * x * ds).sum(axis=reduce_axes)
        self.beta.grad = dbeta if self.beta.grad is None else self.beta.grad + dbeta
        return dout * (s if self.broken else s + beta * x * ds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=4)
    p.add_argument("--broken", action="store_true", help="use a wrong backward (the check must fail)")
    args = p.parse_args(argv)

    layer = LearnableSwish(args.channels, broken=args.broken)
    layer.beta.data[:] = np.linspace(0.5, 2.0, args.channels)
    x = np.random.default_rng(0).standard_normal((args.batch, args.channels, args.size, args.size))
    # dy/dx crosses zero near x = -1.28 / beta, where rounding noise in the
    # central difference is relatively large: allow 1e-5 (a wrong term gives ~1).
    ok, report = gradcheck(layer, x, tol=1e-5)
    print(report)
    if not ok:
        raise SystemExit(1)
    return ok


if __name__ == "__main__":
    main()
