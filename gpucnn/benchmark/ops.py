"""What the benchmark times on our side: the op table, the work of an op
(flops or bytes), its inputs, and zero-argument calls of our functions."""
import math

import numpy as np

from .. import functional as F


# op -> (case family, gpucnn function name pattern, arrays it reads)
OPS = {
    "conv_forward": ("conv", "conv{nd}d", ("x", "w")),
    "conv_backward_data": ("conv", "conv{nd}d_backward_data", ("dy", "w")),
    "conv_backward_filter": ("conv", "conv{nd}d_backward_filter", ("dy", "x")),
    "max_pool_forward": ("pool", "max_pool{nd}d", ("x",)),
    "max_pool_backward": ("pool", "max_pool{nd}d_backward", ("dy", "argmax")),
    "avg_pool_forward": ("pool", "avg_pool{nd}d", ("x",)),
    "avg_pool_backward": ("pool", "avg_pool{nd}d_backward", ("dy",)),
}
REFERENCES = ("cpu_path", "torch_cpu", "cudnn_tf32_off", "cudnn_tf32_on", "torch_bf16")
CHECK_TOLERANCE = 1e-3      # max |ours - ref| / max |ref| for float32 outputs
# The same check per conv precision (docs/precision.md): TF32 and BF16
# operands carry 2**-11 and 2**-8 relative rounding, a few times that in the
# worst element of a sum. Set from that bound, not yet from a GPU run.
CHECK_TOLERANCES = {"highest": CHECK_TOLERANCE, "high": 4e-3, "medium": 3e-2}
CPU_BASELINE_REPEATS = 3    # our CPU path inside a GPU run: few repeats ...
CPU_BASELINE_SECONDS = 2.0  # ... and a time budget per measurement


def gpucnn_function(op, nd):
    return getattr(F, OPS[op][1].format(nd=nd))


def work(op, case):
    """{'flops': ..., 'bytes': ...}: conv flops; pool bytes read + written once
    (float32 data, int32 argmax)."""
    if OPS[op][0] == "conv":
        return {"flops": case.conv_flops(), "bytes": None}
    x, y = math.prod(case.x_shape), math.prod(case.y_shape)
    elements = {"max_pool_forward": x + 2 * y,   # read x; write y and argmax
                "max_pool_backward": 2 * y + x,  # read dy and argmax; write dx
                "avg_pool_forward": x + y,
                "avg_pool_backward": y + x}[op]
    return {"flops": None, "bytes": 4 * elements}


def make_inputs(case, seed=0):
    """NumPy float32 inputs of a case: x, dy and (conv) w, uniform in [-1, 1)."""
    rng = np.random.default_rng(seed)
    shapes = {"x": case.x_shape, "dy": case.y_shape}
    if case.family == "conv":
        shapes["w"] = case.w_shape
    return {k: rng.uniform(-1.0, 1.0, size=s).astype(np.float32) for k, s in shapes.items()}


def ours_call(op, case, a, version=None, precision=None):
    """Zero-argument callable running our op on the arrays in `a` (NumPy or
    CuPy). `version` is passed only to functions that take one, `precision`
    only to the convolutions."""
    f = gpucnn_function(op, case.nd)
    kw = {"version": version} if version is not None else {}
    if precision is not None and OPS[op][0] == "conv":
        kw["precision"] = precision
    s, p, k = case.stride, case.padding, case.kernel
    if case.family == "conv":
        kw.update(dilation=case.dil, groups=case.groups)
    if op == "conv_forward":
        return lambda: f(a["x"], a["w"], None, s, p, **kw)
    if op == "conv_backward_data":
        return lambda: f(a["dy"], a["w"], case.x_shape, s, p, **kw)
    if op == "conv_backward_filter":
        return lambda: f(a["dy"], a["x"], case.w_shape, s, p, **kw)
    if op == "max_pool_backward":  # with the geometry, as the layers call it
        return lambda: f(a["dy"], a["argmax"], case.x_shape, kernel_size=k, stride=s, padding=p, **kw)
    if op == "avg_pool_backward":
        return lambda: f(a["dy"], case.x_shape, k, s, p, **kw)
    return lambda: f(a["x"], k, s, p, **kw)  # pool forwards


def with_argmax(op, case, a):
    """Add the argmax a max-pool backward reads (from our forward on a's device)."""
    if op == "max_pool_backward":
        a["argmax"] = gpucnn_function("max_pool_forward", case.nd)(
            a["x"], case.kernel, case.stride, case.padding)[1]
    return a
