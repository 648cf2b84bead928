"""Weight initializers (in place, PyTorch's names and formulas).

Each function takes a Parameter (or an array), fills it from the global
generator of gpucnn.random (draws are made in float64 on the host and then
cast and moved to the tensor's dtype and device, so one seed gives the same
weights on the CPU and the GPU), and returns it.

fan_in / fan_out of a weight of shape (out, in, *kernel) — Linear's
(out_features, in_features) and Conv's (K, C, R, S) alike:
    fan_in = in * prod(kernel),  fan_out = out * prod(kernel)

    normal_          N(mean, std^2), std 0.01 by default: the course's "small
                     random numbers" (fine for shallow nets; activations shrink
                     layer after layer in deep ones)
    xavier_uniform_  U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))
    xavier_normal_   N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out))
    kaiming_uniform_ U(-b, b), b = gain * sqrt(3 / fan)
    kaiming_normal_  N(0, s^2), s = gain / sqrt(fan)
                     gain = calculate_gain(nonlinearity, a); fan = fan_in or
                     fan_out by `mode`. He et al.'s init for ReLU nets is
                     kaiming_normal_(w, nonlinearity='relu'): s = sqrt(2/fan_in).

Layer defaults (the choice made here: PyTorch's, so that a gpucnn model
starts from the same distribution as its PyTorch twin): Linear and Conv1d/2d/3d
weights use kaiming_uniform_(w, a=sqrt(5)), i.e. U(-1/sqrt(fan_in),
1/sqrt(fan_in)), and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm
starts at weight 1, bias 0. For deep ReLU nets call kaiming_normal_(w,
nonlinearity='relu') on each weight (He init).
"""
import math

import numpy as np

from .. import backend
from .. import random as grandom
from .module import Parameter


def _array(tensor):
    return tensor.data if isinstance(tensor, Parameter) else tensor


def _fill(tensor, values):
    """Write host float64 `values` into `tensor` (a Parameter or an array)."""
    a = _array(tensor)
    values = values.astype(a.dtype)
    if backend.is_gpu_array(a):
        values = backend.to_gpu(values)
    a[...] = values
    return tensor


def calculate_fans(shape):
    """(fan_in, fan_out) of a weight shape (out, in, *kernel)."""
    if len(shape) < 2:
        raise ValueError(f"fan in/out needs a weight with at least 2 dimensions, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    """The std gain that keeps activations' variance: 1 for linear/conv/sigmoid,
    5/3 for tanh, sqrt(2) for relu, sqrt(2 / (1 + a^2)) for leaky_relu with
    slope a (default 0.01), 3/4 for selu."""
    fixed = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
             "selu": 0.75, "conv1d": 1.0, "conv2d": 1.0, "conv3d": 1.0}
    if nonlinearity in fixed:
        return fixed[nonlinearity]
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def uniform_(tensor, a=0.0, b=1.0):
    shape = _array(tensor).shape
    return _fill(tensor, grandom.generator().uniform(a, b, size=shape))


def normal_(tensor, mean=0.0, std=0.01):
    shape = _array(tensor).shape
    return _fill(tensor, mean + std * grandom.generator().standard_normal(shape))


def constant_(tensor, value):
    return _fill(tensor, np.full(_array(tensor).shape, float(value)))


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain=1.0):
    fan_in, fan_out = calculate_fans(_array(tensor).shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain=1.0):
    fan_in, fan_out = calculate_fans(_array(tensor).shape)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(tensor, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fans(_array(tensor).shape)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity))


def default_weight_and_bias_(weight, bias=None):
    """PyTorch's default for Linear and Conv: kaiming_uniform_(a=sqrt(5)) for
    the weight, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(calculate_fans(_array(weight).shape)[0])
        uniform_(bias, -bound, bound)
