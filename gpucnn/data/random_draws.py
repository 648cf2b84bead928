"""The random numbers a batch transform draws, made on the device of the batch.

A transform asks `batch_draws(rng, x)` for its draws and never calls a
generator itself, so one array-code implementation serves NumPy and CuPy
batches, and tests can inject fixed draws (a BatchDraws subclass).

    NumPy batch, numpy.random.Generator   NumPy's own calls, exactly as the
                                          CPU transforms always made them
                                          (CPU runs are bitwise unchanged)
    CuPy batch,  numpy.random.Generator   the same host draws, copied to the
                                          device: results equal the CPU's
    CuPy batch,  device generator         drawn on the GPU (gpucnn.random.
                                          device_generator(cupy)): no host
                                          work, no device->host read

Device draws are NOT the numbers NumPy would draw for the same seed; they
follow the same distributions (uniform integers, uniform [0, 1), normal,
Beta(a, a), uniform permutations). The device path is written for CuPy and
not yet run on a GPU.
"""
import numpy as np

from .. import backend


class BatchDraws:
    """Draws from a NumPy Generator, returned as arrays of module `xp`."""

    def __init__(self, rng, xp):
        self.rng, self.xp = rng, xp

    def _out(self, a):
        return a if self.xp is np else backend.to_gpu_async(np.asarray(a))

    def integers(self, high, n):
        """n int64 values, uniform in [0, high)."""
        return self._out(self.rng.integers(0, high, size=n))

    def uniform(self, n):
        """n float64 values, uniform in [0, 1)."""
        return self._out(self.rng.random(n))

    def normal(self, std, shape, dtype):
        """Normal(0, std) values of `shape`, in `dtype` (drawn in float64, then cast)."""
        return self._out(self.rng.normal(0.0, std, size=shape).astype(dtype))

    def beta(self, alpha):
        """One Beta(alpha, alpha) value as a 0-d float64 array."""
        return self._out(np.asarray(self.rng.beta(alpha, alpha), dtype=np.float64))

    def permutation(self, n):
        """A uniform random permutation of range(n) (int64)."""
        return self._out(self.rng.permutation(n))


class DeviceDraws(BatchDraws):
    """Draws from a CuPy Generator (cupy.random.default_rng), made on the device.

    Every call passes `size`, so each result is a device array (a size=None
    integer draw would come back as a host number, a device->host read).
    CuPy's Generator has no permutation(): argsort of n uniform float64 keys is
    a uniform permutation (ties have probability ~n^2 / 2^53)."""

    def integers(self, high, n):
        return self.rng.integers(0, high, size=n, dtype=np.int64)

    def uniform(self, n):
        return self.rng.random(size=n, dtype=np.float64)

    def normal(self, std, shape, dtype):
        dtype = np.dtype(dtype)
        draw_dtype = np.float64 if dtype == np.float64 else np.float32  # the dtypes CuPy can draw
        z = self.rng.standard_normal(size=shape, dtype=draw_dtype)
        return (z * draw_dtype(std)).astype(dtype, copy=False)

    def beta(self, alpha):
        return self.rng.beta(alpha, alpha, size=1).astype(np.float64, copy=False).reshape(())

    def permutation(self, n):
        return self.xp.argsort(self.rng.random(size=n, dtype=np.float64))


def batch_draws(rng, x, what="transform"):
    """The draws for a transform of batch x from `rng`: a BatchDraws passes
    through (injected draws), a NumPy Generator draws on the host, any other
    generator is taken for a device generator of the batch's module."""
    if isinstance(rng, BatchDraws):
        return rng
    xp = backend.get_array_module(x)
    if isinstance(rng, np.random.Generator):
        return BatchDraws(rng, xp)
    if xp is np:
        raise TypeError(f"{what}: a NumPy batch {tuple(x.shape)} needs a numpy.random.Generator, "
                        f"got {type(rng).__name__}")
    return DeviceDraws(rng, xp)
