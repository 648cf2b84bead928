"""Convolution and transposed-convolution layers over 1, 2 and 3 spatial
dimensions (PyTorch's names, argument order, parameter shapes and
state_dict keys).

Notation: x (N, C, *spatial), weight (K, C/groups, *kernel), bias (K,),
y (N, K, *out) with out = (size + 2P - D*(kernel-1) - 1) // stride + 1 per
dimension (D the dilation); padding may also be "same" (stride 1) or "valid".
Forward and the two backward correlations are gpucnn.functional's:

    y  = conv(x, w) + b
    dx = conv_backward_data(dy, w)     (dy correlated with the rotated filter)
    dw = conv_backward_filter(dy, x)   (x correlated with dy)
    db = dy summed over every axis but the channel axis

ConvTransposeNd: weight (C_in, K/groups, *kernel); its forward is the conv
backward-data, its backward the conv forward (dx) and backward-filter (dw);
out = (size - 1)*stride - 2P + D*(kernel-1) + output_padding + 1.

Default init (PyTorch's): weight kaiming_uniform_(a=sqrt(5)), bias
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = weight.shape[1] * prod(kernel)
(C/groups for a conv, K/groups for a transposed conv, as PyTorch); see init.py.
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

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, dtype=None):
        super().__init__()
        name = type(self).__name__
        self._init_geometry(name, in_channels, out_channels, kernel_size, stride, dilation, groups)
        if isinstance(padding, str):
            # checked here so that a bad layer fails when built, not on its first batch
            _args.conv_padding(name, padding, self.nd, self.kernel_size, self.stride, self.dilation,
                               f"in_channels={in_channels}, kernel_size={self.kernel_size}")
            self.padding = padding
        else:
            self.padding = _args.ntuple(name, "padding", padding, self.nd)
        self._init_parameters((self.out_channels, self.in_channels // self.groups), bias, dtype)

    def _init_geometry(self, name, in_channels, out_channels, kernel_size, stride, dilation, groups):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _args.ntuple(name, "kernel_size", kernel_size, self.nd)
        self.stride = _args.ntuple(name, "stride", stride, self.nd)
        self.dilation = _args.ntuple(name, "dilation", dilation, self.nd)
        if self.in_channels < 1 or self.out_channels < 1 or min(self.kernel_size) < 1:
            raise ValueError(f"{name}: channels and kernel_size must be positive, got "
                             f"in_channels={in_channels}, out_channels={out_channels}, "
                             f"kernel_size={kernel_size}")
        if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1 \
                or self.in_channels % groups or self.out_channels % groups:
            raise ValueError(f"{name}: groups={groups!r} must be a positive int dividing in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        self.groups = int(groups)

    def _init_parameters(self, channels, bias, dtype):
        dtype = np.dtype(dtype or np.float32)
        self.weight = Parameter(np.zeros(channels + self.kernel_size, dtype))
        self.bias = Parameter(np.zeros(self.out_channels, dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.default_weight_and_bias_(self.weight, self.bias)

    ops = _OPS

    def _geometry(self):
        """The functional ops' arguments after the arrays (and shape)."""
        return (self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x):
        conv = self.ops[self.nd][0]
        b = None if self.bias is None else self.bias.data
        y = conv(x, self.weight.data, b, *self._geometry())
        self._save(x)
        return y

    def backward(self, dout):
        (x,) = self._take()
        _, backward_data, backward_filter = self.ops[self.nd]
        w = self.weight.data
        self.weight.accumulate(backward_filter(dout, x, w.shape, *self._geometry()))
        if self.bias is not None:
            self.bias.accumulate(F.conv_backward_bias(dout))
        return backward_data(dout, w, x.shape, *self._geometry())

    def macs(self, in_shape, out_shape):
        """Multiply-adds per sample: each output element sums C/groups * prod(kernel) products."""
        return int(np.prod(out_shape[1:])) * (self.in_channels // self.groups) * int(np.prod(self.kernel_size))

    def extra_repr(self):
        extra = ""
        if any(d != 1 for d in self.dilation):
            extra += f", dilation={self.dilation}"
        if self.groups != 1:
            extra += f", groups={self.groups}"
        if any(getattr(self, "output_padding", ())):
            extra += f", output_padding={self.output_padding}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra}, bias={self.bias is not None}")


class Conv1d(_ConvNd):
    """Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    bias=True): x (N, C, L) -> y (N, K, Lo)."""
    nd = 1


class Conv2d(_ConvNd):
    """Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    bias=True): x (N, C, H, W) -> y (N, K, Ho, Wo). groups=in_channels is a depthwise conv.

    fused_relu (set by gpucnn.nn.fuse when a ReLU follows): y = relu(conv(x) + b)
    through F.conv2d_bias_relu (bias and ReLU in the conv's epilogue), and the
    backward through F.conv2d_bias_relu_backward (the mask and db folded into
    the backward convolutions); the ReLU layer then passes values through."""
    nd = 2
    fused_relu = False

    def forward(self, x):
        if not self.fused_relu:
            return super().forward(x)
        b = None if self.bias is None else self.bias.data
        y = F.conv2d_bias_relu(x, self.weight.data, b, *self._geometry())
        self._save(x, y)
        return y

    def backward(self, dout):
        if len(self._cache or ()) != 2:   # the cache of an unfused forward: (x,)
            return super().backward(dout)
        x, y = self._take()
        dx, dw, db = F.conv2d_bias_relu_backward(dout, y, x, self.weight.data, *self._geometry(),
                                                 bias=self.bias is not None)
        self.weight.accumulate(dw)
        if db is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return super().extra_repr() + (", fused ReLU" if self.fused_relu else "")


class Conv3d(_ConvNd):
    """Conv3d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    bias=True): x (N, C, D, H, W) -> y (N, K, Do, Ho, Wo)."""
    nd = 3


_TRANSPOSE_OPS = {
    1: (F.conv_transpose1d, F.conv_transpose1d_backward_data, F.conv_transpose1d_backward_filter),
    2: (F.conv_transpose2d, F.conv_transpose2d_backward_data, F.conv_transpose2d_backward_filter),
    3: (F.conv_transpose3d, F.conv_transpose3d_backward_data, F.conv_transpose3d_backward_filter),
}


class _ConvTransposeNd(_ConvNd):
    """ConvTransposeNd(in_channels, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0, groups=1, bias=True, dilation=1) (PyTorch's order);
    weight (in_channels, out_channels/groups, *kernel)."""
    ops = _TRANSPOSE_OPS

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, dtype=None):
        Module.__init__(self)
        name = type(self).__name__
        self._init_geometry(name, in_channels, out_channels, kernel_size, stride, dilation, groups)
        self.padding = _args.ntuple(name, "padding", padding, self.nd)
        self.output_padding = _args.ntuple(name, "output_padding", output_padding, self.nd)
        if any(o < 0 or (o >= s and o >= d) for o, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"{name}: output_padding {self.output_padding} must be >= 0 and smaller than "
                             f"either stride {self.stride} or dilation {self.dilation}")
        self._init_parameters((self.in_channels, self.out_channels // self.groups), bias, dtype)

    def _geometry(self):
        return (self.stride, self.padding, self.output_padding, self.groups, self.dilation)

    def macs(self, in_shape, out_shape):
        """Multiply-adds per sample: each input element meets K/groups * prod(kernel) weights."""
        return (int(np.prod(in_shape[1:])) * (self.out_channels // self.groups)
                * int(np.prod(self.kernel_size)))


class ConvTranspose1d(_ConvTransposeNd):
    """x (N, C_in, L) -> y (N, K, (L-1)*stride - 2P + D*(S-1) + output_padding + 1)."""
    nd = 1


class ConvTranspose2d(_ConvTransposeNd):
    """x (N, C_in, H, W) -> y (N, K, Ho, Wo), Ho = (H-1)*stride - 2P + D*(R-1) + output_padding + 1."""
    nd = 2


class ConvTranspose3d(_ConvTransposeNd):
    """x (N, C_in, D, H, W) -> y (N, K, Do, Ho, Wo)."""
    nd = 3
