"""Elementwise activations and Maxout. Each caches the least its backward
needs (a mask or the output) and works on NumPy and CuPy arrays alike.

    ReLU        y = max(x, 0)                       dx = dout * [x > 0]
    LeakyReLU   y = x if x > 0 else a*x             dx = dout * (1 if x > 0 else a)
    Sigmoid     y = 1 / (1 + e^-x)                  dx = dout * y (1 - y)
                (computed as (1 + tanh(x/2)) / 2: no overflow for large |x|)
    Tanh        y = tanh(x)                         dx = dout * (1 - y^2)
    ELU         y = x if x > 0 else alpha (e^x - 1) dx = dout * (1 if x > 0 else y + alpha)

The derivative at the kink x = 0 is taken as that of the x <= 0 side (as
PyTorch does for ReLU).

ReLU on NumPy float32/float64 arrays runs one parallel Numba pass per direction
(elementwise_cpu, the same formulas); other arrays run the array code.
"""
from .. import backend
from . import elementwise_cpu
from .module import Module


class _ReLUArrayCode:
    @staticmethod
    def relu_forward(x):
        mask = x > 0
        return x * mask, mask

    @staticmethod
    def relu_backward(dout, mask):
        return dout * mask


_RELU = {"cpu": elementwise_cpu}   # per-device kernels; the array code otherwise


def _relu_kernels(a):
    on = backend.one_device_and_dtype(a)
    return _RELU[on] if on in _RELU and a.dtype.itemsize >= 4 and a.dtype.kind == "f" else _ReLUArrayCode


class ReLU(Module):
    fused = False   # set by gpucnn.nn.fuse: the layer before applies this ReLU (and its backward)

    def forward(self, x):
        if self.fused:
            return x
        y, mask = _relu_kernels(x).relu_forward(x)
        self._save(mask)
        return y

    def backward(self, dout):
        if self.fused:
            return dout
        (mask,) = self._take()
        return _relu_kernels(dout).relu_backward(dout, mask)

    def extra_repr(self):
        return "fused into the previous layer" if self.fused else ""


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        xp = backend.get_array_module(x)
        slope = xp.where(x > 0, x.dtype.type(1), x.dtype.type(self.negative_slope))
        self._save(slope)
        return x * slope

    def backward(self, dout):
        (slope,) = self._take()
        return dout * slope

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    def forward(self, x):
        xp = backend.get_array_module(x)
        y = (xp.tanh(x * 0.5) + 1) * 0.5
        self._save(y)
        return y

    def backward(self, dout):
        (y,) = self._take()
        return dout * y * (1 - y)


class Tanh(Module):
    def forward(self, x):
        y = backend.get_array_module(x).tanh(x)
        self._save(y)
        return y

    def backward(self, dout):
        (y,) = self._take()
        return dout * (1 - y * y)


class ELU(Module):
    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):
        xp = backend.get_array_module(x)
        negative = self.alpha * xp.expm1(xp.minimum(x, 0))  # expm1 of <= 0: no overflow
        positive = x > 0
        y = xp.where(positive, x, negative)
        self._save(xp.where(positive, x.dtype.type(1), negative + self.alpha))
        return y

    def backward(self, dout):
        (slope,) = self._take()
        return dout * slope

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Maxout(Module):
    """Maxout(k): the maximum over groups of k consecutive channels.

    Input (N, C, *rest) with C divisible by k -> output (N, C // k, *rest):
        y[n, j, ...] = max(x[n, j*k], x[n, j*k + 1], ..., x[n, j*k + k - 1])
    i.e. x reshaped to (N, C//k, k, *rest), max over the k axis. Axis 1 is
    the feature axis of (N, F) inputs and the channel axis of (N, C, H, W)
    ones, so Linear(d, m*k) followed by Maxout(k) is Goodfellow et al.'s
    maxout unit with m outputs of k linear pieces each (likewise a conv with
    m*k filters). Backward routes dout to the (first) maximum of each group.
    """

    def __init__(self, k):
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"Maxout: k must be >= 1, got {k}")
        self.k = int(k)

    def forward(self, x):
        if x.ndim < 2 or x.shape[1] % self.k:
            raise ValueError(f"Maxout({self.k}): input axis 1 must be divisible by {self.k}, "
                             f"got shape {tuple(x.shape)}")
        xp = backend.get_array_module(x)
        groups = x.reshape((x.shape[0], x.shape[1] // self.k, self.k) + x.shape[2:])
        winner = xp.argmax(groups, axis=2)
        if self._caching():
            self._save(winner, x.shape)
        return xp.max(groups, axis=2)

    def backward(self, dout):
        winner, x_shape = self._take()
        xp = backend.get_array_module(dout)
        piece = xp.arange(self.k).reshape((1, 1, self.k) + (1,) * (dout.ndim - 2))
        dx = (xp.expand_dims(winner, 2) == piece) * xp.expand_dims(dout, 2)
        return dx.reshape(x_shape)

    def extra_repr(self):
        return f"k={self.k}"
