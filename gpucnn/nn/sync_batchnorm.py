"""SyncBatchNorm: batch normalization with statistics over every rank's batch.

Training, per channel c, with M = the number of values over all ranks (each
rank contributes its own count, so unequal batch sizes are exact):
    all-reduce [sum(x), count]          -> mu = sum / M
    all-reduce sum((x - mu)^2)          -> var = . / M       (two passes, as BatchNorm)
    xhat, y, running statistics as in BatchNorm, with M in the unbiased factor.
The all-reduced statistics travel in float64 (C + 1 numbers: the count stays
exact beyond float32's 2^24, and float16 inputs do not overflow).
Backward: the layer's local sums dweight_r = sum(dout * xhat), dbias_r =
sum(dout) are added into .grad (DistributedDataParallel averages them, as for
every parameter); dx needs the sums over all ranks:
    all-reduce [dweight_r, dbias_r]     -> dweight, dbias
    dx = weight / sqrt(var + eps) * (dout - dbias / M - xhat * dweight / M)
With dout the gradient of each rank's own loss this dx is the world size
times the gradient of the mean of the ranks' losses, which DDP's averaging of
the parameter gradients upstream divides out again (PyTorch's SyncBatchNorm
behaves the same). Eval mode is BatchNorm's (running statistics, no
communication). The communicator is gpucnn.distributed's world unless one is
given; a world of size 1 makes the layer a BatchNorm.
"""
import numpy as np

from .. import backend
from .norm import _BatchNorm, _channel_sum


def _sum64(a):
    """Per-channel sums as float64 (float16 input summed in float32 first)."""
    return _channel_sum(a if a.dtype.itemsize >= 4 else a.astype(np.float32)).astype(np.float64)


class SyncBatchNorm(_BatchNorm):
    """SyncBatchNorm(num_features, eps=1e-5, momentum=0.1, comm=None): input (N, C, ...)."""
    allowed_ndim = (2, 3, 4, 5)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=None, comm=None):
        super().__init__(num_features, eps, momentum, dtype)
        self.comm = comm

    def _world(self):
        if self.comm is None:
            from ..distributed import get_world
            return get_world()
        return self.comm

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        shape = self._channel_shape(x)
        comm = self._world()
        xp = backend.get_array_module(x)
        sums = xp.concatenate([_sum64(x), xp.asarray([x.size // x.shape[1]], np.float64)])
        comm.allreduce(sums)
        m = float(sums[-1])
        if m < 2:
            raise ValueError(f"SyncBatchNorm: training needs more than one value per channel over all "
                             f"ranks, got {m:g} (input shape on rank {comm.rank}: {tuple(x.shape)})")
        mu = (sums[:-1] / m).astype(x.dtype)
        centered = x - mu.reshape(shape)
        var = (comm.allreduce(_sum64(centered * centered)) / m).astype(x.dtype)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = centered
        xhat *= inv_std.reshape(shape)
        self._update_running(mu, var * (m / (m - 1)))
        self._save(xhat, inv_std, m)
        y = xhat * self.weight.data.reshape(shape)
        y += self.bias.data.reshape(shape)
        return y

    def backward(self, dout):
        xhat, inv_std, m = self._take()
        shape = self._channel_shape(dout)
        xp = backend.get_array_module(dout)
        dweight, dbias = _sum64(dout * xhat), _sum64(dout)
        self.weight.accumulate(dweight.astype(self.weight.data.dtype))
        self.bias.accumulate(dbias.astype(self.bias.data.dtype))
        means = (self._world().allreduce(xp.concatenate([dweight, dbias])) / m).astype(dout.dtype)
        c = self.num_features
        dx = xhat * (-means[:c]).reshape(shape)
        dx += dout
        dx -= means[c:].reshape(shape)
        dx *= (self.weight.data * inv_std).reshape(shape)
        return dx

    @classmethod
    def convert_sync_batchnorm(cls, module, comm=None):
        """Replace every BatchNorm1d/2d in `module` (or `module` itself) by a
        SyncBatchNorm with the same parameters, buffers and mode, in place;
        returns the (possibly new) top module."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            sync = cls(module.num_features, module.eps, module.momentum, module.weight.data.dtype, comm)
            sync.weight, sync.bias = module.weight, module.bias
            for name, value in module._buffers.items():
                sync.register_buffer(name, value)
            sync.train(module.training)
            return sync
        for name, child in list(module._modules.items()):
            new = cls.convert_sync_batchnorm(child, comm)
            if new is not child:   # replace in place: Sequential's order is the dict's order
                module._modules[name] = new
                object.__setattr__(module, name, new)
        return module
