"""Batch normalization (PyTorch semantics).

Training: per channel c, over the batch (and spatial) axes, m values:
    mu = mean(x),  var = mean((x - mu)^2)            (biased, used to normalize)
    xhat = (x - mu) / sqrt(var + eps),  y = weight * xhat + bias
    running_mean = (1 - momentum) * running_mean + momentum * mu
    running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)   (unbiased)
    momentum=None: cumulative average, momentum_t = 1 / num_batches_tracked.
Eval: xhat = (x - running_mean) / sqrt(running_var + eps).

Backward of the training forward (sums over the m values of a channel):
    dweight = sum(dout * xhat),  dbias = sum(dout)
    dx = weight / sqrt(var + eps) * (dout - dbias / m - xhat * dweight / m)
(the textbook form with g = dout * weight, (1/m)/sqrt(var+eps) * (m g - sum(g)
- xhat sum(g xhat)), after sum(g) = weight dbias and sum(g xhat) = weight dweight).
Per-channel sums run as a contiguous reduce over (N, C, spatial) -> (N, C)
-> (C,), and the elementwise steps work in place: several times faster in
NumPy than reducing over axes (0, 2, 3) with fresh temporaries.
In eval mode the layer is a fixed affine map and caches nothing (no backward).

Fused ReLU (set by gpucnn.nn.fuse on a BatchNorm followed by a ReLU, issue
11): y = relu(weight * xhat + bias) in the pass that writes y, and the
backward starts from dout * [y > 0] in its own passes (the ReLU layer then
passes values through). y is the unfused path's, bit for bit, and so are the
gradients on the CPU (the same float32 values enter the same sums).

Per-device implementations, chosen by the forward from the arrays (one table,
_IMPLEMENTATIONS, keyed by backend.one_device_and_dtype); the forward saves
the implementation with its state, and the same one runs the backward:
- "gpu" (all CuPy, one dtype): the elementwise steps are fused launches
  (gpucnn.fused_gpu), the per-channel sums still taken by CuPy;
- "cpu" (all NumPy, one dtype): Numba kernels (norm_cpu: the same formulas
  in 3 passes forward and 2 backward, sums in float64, xhat recomputed in
  the backward instead of stored; eval in 1 pass);
- anything else (mixed dtypes): the array code of _ArrayCode, on either
  device, which promotes as NumPy does.
"""
import numpy as np

from .. import backend, fused_gpu
from . import norm_cpu
from .module import Module, Parameter


def _channel_sum(a):
    """Sum over every axis but the channel axis 1, as contiguous reductions."""
    n, c = a.shape[:2]
    return a.reshape(n, c, -1).sum(axis=2).sum(axis=0)


def _relu_in_place(y):
    """ReLU's y * [y > 0] (nn.ReLU's values), in place."""
    y *= y > 0
    return y


class _ArrayCode:
    """NumPy-compatible array code: any device, any dtype mix."""

    def eval_forward(self, bn, x, shape, relu=False):
        xp = backend.get_array_module(x)
        inv_std = (1.0 / xp.sqrt(bn.running_var + bn.eps)).reshape(shape)
        y = (x - bn.running_mean.reshape(shape)) * inv_std * \
            bn.weight.data.reshape(shape) + bn.bias.data.reshape(shape)
        return _relu_in_place(y) if relu else y

    def train_forward(self, bn, x, shape, m, relu=False):
        xp = backend.get_array_module(x)
        mu = _channel_sum(x) / m
        centered = x - mu.reshape(shape)
        var = _channel_sum(centered * centered) / m
        inv_std = 1.0 / xp.sqrt(var + bn.eps)
        xhat = centered
        xhat *= inv_std.reshape(shape)                       # in place: centered is not kept
        bn._update_running(mu, var * (m / (m - 1)))
        y = xhat * bn.weight.data.reshape(shape)
        y += bn.bias.data.reshape(shape)
        if relu:
            _relu_in_place(y)
        bn._save(self, xhat, inv_std, *([y] if relu else []))
        return y

    def backward(self, bn, dout, shape, m, xhat, inv_std, y=None):
        if y is not None:
            dout = dout * (y > 0)
        dweight, dbias = _channel_sum(dout * xhat), _channel_sum(dout)
        bn.weight.accumulate(dweight)
        bn.bias.accumulate(dbias)
        dx = xhat * (-dweight / m).reshape(shape)
        dx += dout
        dx -= (dbias / m).reshape(shape)
        dx *= (bn.weight.data * inv_std).reshape(shape)
        return dx


class _CpuKernels(_ArrayCode):
    """Training forward, backward and eval as Numba kernels (norm_cpu). The
    forward saves x and its statistics, not xhat (norm_cpu recomputes it)."""

    def eval_forward(self, bn, x, shape, relu=False):
        if x.size == 0:
            return super().eval_forward(bn, x, shape, relu)
        inv_std = 1.0 / np.sqrt(bn.running_var + bn.eps)   # as the array code computes it
        return norm_cpu.eval_forward(x, bn.running_mean, inv_std, bn.weight.data, bn.bias.data, relu)

    def train_forward(self, bn, x, shape, m, relu=False):
        y, saved, mu, var, inv_std = norm_cpu.forward(x, bn.eps, bn.weight.data, bn.bias.data, relu)
        bn._update_running(mu, var * (m / (m - 1)))
        bn._save(self, saved)
        return y

    def backward(self, bn, dout, shape, m, saved):
        w, b = bn.weight.data, bn.bias.data
        if implementation(dout, saved.x, w) is not self:   # a dout of another dtype: the array code
            xhat, y = saved.xhat_and_y(dout.shape, w, b)
            return _ARRAY_CODE.backward(bn, dout, shape, m, xhat, saved.inv_std, y)
        dx, dweight, dbias = norm_cpu.backward(dout, saved, w, b)
        bn.weight.accumulate(dweight)
        bn.bias.accumulate(dbias)
        return dx


class _GpuFused(_ArrayCode):
    """The elementwise steps as fused CuPy launches (gpucnn.fused_gpu)."""

    def eval_forward(self, bn, x, shape, relu=False):
        evaluate = fused_gpu.batch_norm_eval_relu if relu else fused_gpu.batch_norm_eval
        return evaluate(x, bn.running_mean.reshape(shape), bn.running_var.reshape(shape),
                        bn.eps, bn.weight.data.reshape(shape), bn.bias.data.reshape(shape))

    def train_forward(self, bn, x, shape, m, relu=False):
        mu = _channel_sum(x) / m
        sum_sq = _channel_sum(fused_gpu.squared_deviation(x, mu.reshape(shape)))
        factor = bn._next_factor()
        inv_std, new_mean, new_var = fused_gpu.batch_norm_stats(
            sum_sq, m, bn.eps, mu, bn.running_mean, bn.running_var, factor)
        bn._store_running(new_mean, new_var)
        normalize = fused_gpu.batch_norm_normalize_relu if relu else fused_gpu.batch_norm_normalize
        xhat, y = normalize(x, mu.reshape(shape), inv_std.reshape(shape),
                            bn.weight.data.reshape(shape), bn.bias.data.reshape(shape))
        bn._save(self, xhat, inv_std, *([y] if relu else []))
        return y

    def backward(self, bn, dout, shape, m, xhat, inv_std, y=None):
        if implementation(dout, xhat, bn.weight.data) is not self:   # a dout of another dtype
            return _ARRAY_CODE.backward(bn, dout, shape, m, xhat, inv_std, y)
        if y is None:
            dweight, dbias = _channel_sum(dout * xhat), _channel_sum(dout)
        else:   # the masked dout and its product with xhat in one launch
            dout, product = fused_gpu.relu_grad_product(dout, y, xhat)
            dweight, dbias = _channel_sum(product), _channel_sum(dout)
        bn.weight.accumulate(dweight)
        bn.bias.accumulate(dbias)
        return fused_gpu.batch_norm_backward(dout, xhat, dweight.reshape(shape), dbias.reshape(shape), m,
                                             bn.weight.data.reshape(shape), inv_std.reshape(shape))


_ARRAY_CODE = _ArrayCode()
_IMPLEMENTATIONS = {"cpu": _CpuKernels(), "gpu": _GpuFused()}


def implementation(*arrays):
    """The per-device implementation for these arrays (see the module docstring)."""
    return _IMPLEMENTATIONS.get(backend.one_device_and_dtype(*arrays), _ARRAY_CODE)


class _BatchNorm(Module):
    allowed_ndim = ()
    fused_relu = False   # set by gpucnn.nn.fuse: a ReLU follows and is applied here

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=None):
        super().__init__()
        self.num_features, self.eps = int(num_features), float(eps)
        self.momentum = None if momentum is None else float(momentum)
        dtype = np.dtype(dtype or np.float32)
        self.weight = Parameter(np.ones(self.num_features, dtype))
        self.bias = Parameter(np.zeros(self.num_features, dtype))
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype))
        self.register_buffer("running_var", np.ones(self.num_features, dtype))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def _channel_shape(self, x):
        name = type(self).__name__
        if x.ndim not in self.allowed_ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{name}({self.num_features}): input must be "
                             f"{' or '.join(f'{n}-D' for n in self.allowed_ndim)} with "
                             f"{self.num_features} channels on axis 1, got shape {tuple(x.shape)}")
        return (1, -1) + (1,) * (x.ndim - 2)   # broadcasts a per-channel vector

    def forward(self, x):
        shape = self._channel_shape(x)
        impl = implementation(x, self.weight.data, self.running_mean)
        if not self.training:
            return impl.eval_forward(self, x, shape, self.fused_relu)
        m = x.size // x.shape[1]
        if m < 2:
            raise ValueError(f"{type(self).__name__}: training needs more than one value per channel, "
                             f"got input shape {tuple(x.shape)}")
        return impl.train_forward(self, x, shape, m, self.fused_relu)

    def _next_factor(self):
        """Counts the batch; the weight of its statistics in the running ones."""
        self.num_batches_tracked = np.array(int(self.num_batches_tracked) + 1, dtype=np.int64)
        return 1.0 / int(self.num_batches_tracked) if self.momentum is None else self.momentum

    def _update_running(self, mu, unbiased_var):
        factor = self._next_factor()
        self._store_running((1 - factor) * self.running_mean + factor * mu,
                            (1 - factor) * self.running_var + factor * unbiased_var)

    def _store_running(self, mean, var):
        """In place when the dtype is kept, so a captured CUDA graph (which keeps
        writing the arrays it saw) and the module hold the same buffers."""
        for name, new in (("running_mean", mean), ("running_var", var)):
            old = getattr(self, name)
            if new.dtype == old.dtype and backend.is_gpu_array(new) == backend.is_gpu_array(old):
                old[...] = new
            else:
                setattr(self, name, new)

    def backward(self, dout):
        impl, *saved = self._take()   # the implementation whose forward saved the rest
        shape = self._channel_shape(dout)
        m = dout.size // dout.shape[1]
        return impl.backward(self, dout, shape, m, *saved)

    def macs(self, in_shape, out_shape):
        return 0  # a per-element scale and shift, not counted as multiply-adds

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """BatchNorm1d(num_features, eps=1e-5, momentum=0.1): input (N, C) or (N, C, L)."""
    allowed_ndim = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm2d(num_features, eps=1e-5, momentum=0.1): input (N, C, H, W)."""
    allowed_ndim = (4,)
