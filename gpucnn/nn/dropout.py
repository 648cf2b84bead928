"""Inverted dropout.

Training: each element is kept with probability 1 - p and scaled by
1 / (1 - p), so the expected output equals the input and eval needs no
rescaling:  mask = [u >= p] / (1 - p),  u ~ U[0, 1),  y = x * mask,
dx = dout * mask. p = 1 drops everything. Eval: the identity.
Masks come from gpucnn.random (one seed, one sequence of masks on the CPU).
"""
from .. import backend
from .. import random as grandom
from .module import Module


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._save(None)
            return x
        xp = backend.get_array_module(x)
        u = grandom.device_generator(xp).random(x.shape, dtype=x.dtype)
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        mask = (u >= self.p) * x.dtype.type(scale)
        self._save(mask)
        return x * mask

    def backward(self, dout):
        (mask,) = self._take()
        return dout if mask is None else dout * mask

    def extra_repr(self):
        return f"p={self.p}"
