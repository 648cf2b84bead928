"""CPU batch norm, training forward + backward: the Numba kernels
(gpucnn/nn/norm_cpu.py) against the NumPy array code they replaced (still the
path for mixed dtypes), interleaved in one process on lenet_bn's two batch-norm
shapes; medians of 27 after 3 warm-up rounds.

    python bench/cpu_batchnorm_ab.py
"""
import time, numpy as np
from gpucnn import nn
from gpucnn.nn import norm
rng = np.random.default_rng(0)
res = {}
for shape in [(128, 32, 28, 28), (128, 64, 14, 14)]:
    x = rng.standard_normal(shape, dtype=np.float32); d = rng.standard_normal(shape, dtype=np.float32)
    layer = nn.BatchNorm2d(shape[1])
    real = norm._IMPLEMENTATIONS["cpu"]
    t = {"numba": [], "array": []}
    for rep in range(30):
        for name in ("numba", "array"):
            norm._IMPLEMENTATIONS["cpu"] = real if name == "numba" else norm._ARRAY_CODE
            s = time.perf_counter(); layer(x); layer.backward(d); t[name].append(time.perf_counter() - s)
    norm._IMPLEMENTATIONS["cpu"] = real
    print(shape, {k: round(float(np.median(v[3:])) * 1e3, 2) for k, v in t.items()}, "ms fwd+bwd (median, interleaved)")
