"""Convolution layers over 1, 2 and 3 spatial dimensions.

Notation: x (N, C, *spatial), weight (K, C, *kernel), bias (K,),
y (N, K, *out) with out = (size + 2P - kernel) // stride + 1 per dimension.
Forward and the two backward correlations are gpucnn.functional's:

    y  = conv(x, w) + b
    dx = conv_backward_data(dy, w)     (dy correlated with the rotated filter)
    dw = conv_backward_filter(dy, x)   (x correlated with dy)
    db = dy summed over every axis but the channel axis

Default init (PyTorch's): weight kaiming_uniform_(a=sqrt(5)), bias
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C * prod(kernel); see init.py.
"""
import numpy as np

from .. import functional as F
from ..functional import _args
from . import init
from .module import Module, Parameter

_OPS = {
    1: (F.conv1d, F.conv1d_backward_data, F.conv1d_backward_filter),
    2: (F.conv2d, F.conv2d_backward_data, F.conv2d_backward_filter),
    3: (F.conv3d, F.conv3d_backward_data, F.conv3d_backward_filter),
}


class _ConvNd(Module):
    nd = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=None):
        super().__init__()
        name = type(self).__name__
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _args.ntuple(name, "kernel_size", kernel_size, self.nd)
        self.stride = _args.ntuple(name, "stride", stride, self.nd)
        self.padding = _args.ntuple(name, "padding", padding, self.nd)
        if self.in_channels < 1 or self.out_channels < 1 or min(self.kernel_size) < 1:
            raise ValueError(f"{name}: channels and kernel_size must be positive, got "
                             f"in_channels={in_channels}, out_channels={out_channels}, "
                             f"kernel_size={kernel_size}")
        dtype = np.dtype(dtype or np.float32)
        self.weight = Parameter(np.zeros((self.out_channels, self.in_channels) + self.kernel_size, dtype))
        self.bias = Parameter(np.zeros(self.out_channels, dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.default_weight_and_bias_(self.weight, self.bias)

    def forward(self, x):
        conv = _OPS[self.nd][0]
        b = None if self.bias is None else self.bias.data
        y = conv(x, self.weight.data, b, self.stride, self.padding)
        self._save(x)
        return y

    def backward(self, dout):
        (x,) = self._take()
        _, backward_data, backward_filter = _OPS[self.nd]
        w = self.weight.data
        self.weight.accumulate(backward_filter(dout, x, w.shape, self.stride, self.padding))
        if self.bias is not None:
            self.bias.accumulate(F.conv_backward_bias(dout))
        return backward_data(dout, w, x.shape, self.stride, self.padding)

    def macs(self, in_shape, out_shape):
        """Multiply-adds per sample: each output element sums C * prod(kernel) products."""
        return int(np.prod(out_shape[1:])) * self.in_channels * int(np.prod(self.kernel_size))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class Conv1d(_ConvNd):
    """Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
    x (N, C, L) -> y (N, K, Lo)."""
    nd = 1


class Conv2d(_ConvNd):
    """Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
    x (N, C, H, W) -> y (N, K, Ho, Wo)."""
    nd = 2


class Conv3d(_ConvNd):
    """Conv3d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
    x (N, C, D, H, W) -> y (N, K, Do, Ho, Wo)."""
    nd = 3
