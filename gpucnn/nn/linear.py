"""Fully connected layer and Flatten.

Linear(in_features, out_features, bias=True): x (N, in) -> y (N, out),
    y = x W^T + b,   W (out, in) as in PyTorch
    dW = dout^T x,   db = sum_n dout,   dx = dout W
Default init (PyTorch's): W kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(in)),
b U(+-1/sqrt(in)); see init.py.

On the CPU (NumPy arrays of one dtype) the three products split their rows
across threads, each part a single-threaded BLAS call (cpu_parallel.matmul):
the OpenBLAS pool measured 10-300x slower than one thread on a loaded
2-core machine, its threads spinning while descheduled.

Flatten(start_dim=1, end_dim=-1): merges dimensions start_dim..end_dim
(PyTorch's defaults turn (N, C, H, W) into (N, C*H*W)); backward reshapes back.
"""
import numpy as np

from .. import backend, cpu_parallel
from . import init
from .module import Module, Parameter

_MATMUL = {"cpu": cpu_parallel.matmul}   # per-device products; the array module's @ otherwise


def _matmul(a, b):
    return _MATMUL.get(backend.one_device_and_dtype(a, b), lambda a, b: a @ b)(a, b)


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"Linear: features must be positive, got in_features={in_features}, "
                             f"out_features={out_features}")
        dtype = np.dtype(dtype or np.float32)
        self.weight = Parameter(np.zeros((self.out_features, self.in_features), dtype))
        self.bias = Parameter(np.zeros(self.out_features, dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.default_weight_and_bias_(self.weight, self.bias)

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): input must be "
                             f"(N, {self.in_features}), got shape {tuple(x.shape)}")
        y = _matmul(x, self.weight.data.T)
        if self.bias is not None:
            y += self.bias.data
        self._save(x)
        return y

    def backward(self, dout):
        (x,) = self._take()
        self.weight.accumulate(_matmul(dout.T, x))
        if self.bias is not None:
            self.bias.accumulate(dout.sum(axis=0))
        return _matmul(dout, self.weight.data)

    def macs(self, in_shape, out_shape):
        return self.in_features * self.out_features

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        start = self.start_dim % x.ndim
        end = self.end_dim % x.ndim
        if start > end:
            raise ValueError(f"Flatten: start_dim {self.start_dim} comes after end_dim {self.end_dim} "
                             f"for input shape {tuple(x.shape)}")
        shape = x.shape[:start] + (int(np.prod(x.shape[start:end + 1])),) + x.shape[end + 1:]
        self._save(x.shape)
        return x.reshape(shape)

    def backward(self, dout):
        (x_shape,) = self._take()
        return dout.reshape(x_shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
