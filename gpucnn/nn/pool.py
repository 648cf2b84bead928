"""Max and average pooling layers over 1, 2 and 3 spatial dimensions.

MaxPoolNd(kernel_size, stride=None, padding=0): stride None means the window
size; padding counts as -inf. Training forward caches the argmax (int32 flat
index into each (n, c) input plane) and backward routes dout to it,
overlapping windows accumulating (the course's "max-pool routing").

AvgPoolNd(kernel_size, stride=None, padding=0): padding counts as zeros and is
included in the divisor (PyTorch's count_include_pad=True); backward spreads
dout / window size evenly over each window.

MaxPoolNd(kernel_size, stride=None, padding=0, dilation=1): dilation spaces
the window taps (PyTorch's).

AdaptiveAvgPoolNd(output_size) / AdaptiveMaxPoolNd(output_size): PyTorch's
adaptive windows [floor(o*H/O), ceil((o+1)*H/O)) per axis, any input size;
AdaptiveAvgPool2d(1) is global average pooling.

None has parameters; each passes the forward's geometry to the backward ops.
"""
from .. import functional as F
from ..functional import _args
from .module import Module

_MAX = {1: (F.max_pool1d, F.max_pool1d_backward), 2: (F.max_pool2d, F.max_pool2d_backward),
        3: (F.max_pool3d, F.max_pool3d_backward)}
_AVG = {1: (F.avg_pool1d, F.avg_pool1d_backward), 2: (F.avg_pool2d, F.avg_pool2d_backward),
        3: (F.avg_pool3d, F.avg_pool3d_backward)}


class _PoolNd(Module):
    nd = None

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _args.ntuple(name, "kernel_size", kernel_size, self.nd)
        self.stride = self.kernel_size if stride is None else _args.ntuple(name, "stride", stride, self.nd)
        self.padding = _args.ntuple(name, "padding", padding, self.nd)

    def _geometry(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def macs(self, in_shape, out_shape):
        return 0  # comparisons and additions, no multiply-adds

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _MaxPoolNd(_PoolNd):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        super().__init__(kernel_size, stride, padding)
        self.dilation = _args.ntuple(type(self).__name__, "dilation", dilation, self.nd)

    def _geometry(self):
        return dict(super()._geometry(), dilation=self.dilation)

    def extra_repr(self):
        return super().extra_repr() + f", dilation={self.dilation}"

    def forward(self, x):
        y, argmax = _MAX[self.nd][0](x, **self._geometry())
        self._save(argmax, x.shape)
        return y

    def backward(self, dout):
        argmax, x_shape = self._take()
        return _MAX[self.nd][1](dout, argmax, x_shape, **self._geometry())


class _AvgPoolNd(_PoolNd):
    def forward(self, x):
        y = _AVG[self.nd][0](x, **self._geometry())
        self._save(x.shape)
        return y

    def backward(self, dout):
        (x_shape,) = self._take()
        return _AVG[self.nd][1](dout, x_shape, **self._geometry())


class MaxPool1d(_MaxPoolNd):
    nd = 1


class MaxPool2d(_MaxPoolNd):
    nd = 2


class MaxPool3d(_MaxPoolNd):
    nd = 3


class AvgPool1d(_AvgPoolNd):
    nd = 1


class AvgPool2d(_AvgPoolNd):
    nd = 2


class AvgPool3d(_AvgPoolNd):
    nd = 3


_ADAPTIVE = {nd: (getattr(F, f"adaptive_avg_pool{nd}d"), getattr(F, f"adaptive_avg_pool{nd}d_backward"),
                  getattr(F, f"adaptive_max_pool{nd}d"), getattr(F, f"adaptive_max_pool{nd}d_backward"))
             for nd in (1, 2, 3)}


class _AdaptivePoolNd(Module):
    nd = None

    def __init__(self, output_size):
        super().__init__()
        # validated like the op does (None entries keep the input size)
        _args.adaptive_output_size(type(self).__name__, output_size, (1,) * self.nd)
        self.output_size = output_size

    def macs(self, in_shape, out_shape):
        return 0

    def extra_repr(self):
        return f"output_size={self.output_size}"


class _AdaptiveAvgPoolNd(_AdaptivePoolNd):
    def forward(self, x):
        y = _ADAPTIVE[self.nd][0](x, self.output_size)
        self._save(x.shape)
        return y

    def backward(self, dout):
        (x_shape,) = self._take()
        return _ADAPTIVE[self.nd][1](dout, x_shape)


class _AdaptiveMaxPoolNd(_AdaptivePoolNd):
    def forward(self, x):
        y, argmax = _ADAPTIVE[self.nd][2](x, self.output_size)
        self._save(argmax, x.shape)
        return y

    def backward(self, dout):
        argmax, x_shape = self._take()
        return _ADAPTIVE[self.nd][3](dout, argmax, x_shape)


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    nd = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    nd = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    nd = 3


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    nd = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    nd = 2


class AdaptiveMaxPool3d(_AdaptiveMaxPoolNd):
    nd = 3
