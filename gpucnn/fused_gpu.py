"""Fused elementwise GPU formulas: optimizer updates and batch norm.

Written as plain array code, each of these formulas is 5-15 CuPy operations,
and each operation is a kernel launch costing ~10 us of host time. On an H100
that host time, not the GPU, bounded a training step (bench/profile_gpu_step.py:
Adam's per-parameter updates took 3.4 ms of a 14.3 ms profiled vgg_small step). Here
each formula is one launch (kernel_loader.elementwise_kernel) computing the
CPU path's formula in the array's dtype, with the constants computed on the
host and cast to that dtype, as NumPy does with Python scalars. Results can
differ from the CPU path in the last bits: a division by m here is a
multiplication by 1/m, and the compiler may contract a*b+c into one fused
multiply-add.
Inputs broadcast (a per-channel vector shaped (1, C, 1, ...) against (N, C, ...)).
Every float argument is bound to one type T: callers take this path only for
all-CuPy arrays of one dtype (the per-device tables in nn/norm.py and
optim/optimizers.py); otherwise their array code runs and promotes mixed
dtypes as NumPy does. The optimizer functions share their signatures with
the CPU's Numba kernels (gpucnn.optim.optim_cpu).
"""
import numpy as np

from .kernel_loader import elementwise_kernel


# ---- optimizers (in place on p and the state arrays) -------------------------

_ADAM = ("T g, T wd, T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, "
         "T step_size, T sqrt_bc2, T eps",
         "T p, T m, T v",
         """
         T gg = g + wd * p;                     // L2 term (wd = 0 for AdamW)
         p = p * decay;                         // decoupled decay (1 for Adam)
         m = m * beta1 + one_minus_beta1 * gg;
         v = v * beta2 + one_minus_beta2 * gg * gg;
         p = p - step_size * m / (sqrt(v) / sqrt_bc2 + eps);
         """)

_SGD_MOMENTUM = ("T g, T lr, T wd, T momentum, T one_minus_dampening, int32 first, int32 nesterov",
                 "T p, T b",
                 """
                 T gg = g + wd * p;
                 b = first ? gg : b * momentum + one_minus_dampening * gg;
                 p = p - lr * (nesterov ? gg + momentum * b : b);
                 """)


def _scalars(dtype, *values):
    return tuple(dtype.type(v) for v in values)


def adam_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """Adam (decoupled=False) or AdamW step t (from 1), without amsgrad."""
    bias_correction1, bias_correction2 = 1 - beta1 ** t, 1 - beta2 ** t
    wd, decay = (0.0, 1 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    adam_step_with(p, g, m, v, *_scalars(p.dtype, wd, decay, beta1, 1 - beta1, beta2, 1 - beta2,
                                         lr / bias_correction1, np.sqrt(bias_correction2), eps))


def adam_step_with(p, g, m, v, wd, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                   sqrt_bc2, eps):
    """The Adam kernel with its constants given: scalars of p's dtype, or 0-d
    arrays of it in device memory (gpucnn.optim.step_scalars: a CUDA graph
    replays the launch and reads this step's values there)."""
    elementwise_kernel("gpucnn_adam", *_ADAM)(g, wd, decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
                                              step_size, sqrt_bc2, eps, p, m, v)


def sgd_momentum_step(p, g, b, *, lr, weight_decay, momentum, dampening, nesterov, first):
    """SGD with momentum; `first` makes b <- g (torch's first step)."""
    consts = _scalars(p.dtype, weight_decay, momentum, 1 - dampening)
    sgd_momentum_step_with(p, g, b, p.dtype.type(lr), *consts, nesterov=nesterov, first=first)


def sgd_momentum_step_with(p, g, b, lr, wd, momentum, one_minus_dampening, *, nesterov, first):
    """The SGD-momentum kernel with lr a scalar of p's dtype or a 0-d array of it
    in device memory (see adam_step_with)."""
    elementwise_kernel("gpucnn_sgd_momentum", *_SGD_MOMENTUM)(
        g, lr, wd, momentum, one_minus_dampening, np.int32(first), np.int32(nesterov), p, b)


# ---- batch norm ---------------------------------------------------------------

_SQUARED_DEVIATION = ("T x, T mu", "T out", "T d = x - mu; out = d * d;")

_BN_STATS = ("T sum_sq, T inv_m, T eps, T mu, T running_mean, T running_var, T factor, "
             "T one_minus_factor, T unbias",
             "T inv_std, T new_mean, T new_var",
             """
             T var = sum_sq * inv_m;
             inv_std = 1 / sqrt(var + eps);
             new_mean = one_minus_factor * running_mean + factor * mu;
             new_var = one_minus_factor * running_var + factor * (var * unbias);
             """)

_BN_NORMALIZE = ("T x, T mu, T inv_std, T weight, T bias", "T xhat, T y",
                 "xhat = (x - mu) * inv_std; y = xhat * weight + bias;")

_BN_EVAL = ("T x, T running_mean, T running_var, T eps, T weight, T bias", "T y",
            "y = (x - running_mean) * (1 / sqrt(running_var + eps)) * weight + bias;")

_BN_BACKWARD = ("T dout, T xhat, T dweight, T dbias, T inv_m, T weight, T inv_std", "T dx",
                "dx = (xhat * (-dweight * inv_m) + dout - dbias * inv_m) * (weight * inv_std);")


# Batch norm followed by a ReLU fused into it (gpucnn.nn.fuse; issue 11;
# compiled and emulated, not yet run on a GPU): ReLU's value y * [y > 0]
# written as pos ? y : y * 0 (NaN stays NaN), and its backward's dout * [y > 0].
_BN_NORMALIZE_RELU = ("T x, T mu, T inv_std, T weight, T bias", "T xhat, T y",
                      "xhat = (x - mu) * inv_std; y = xhat * weight + bias; T pos = y > 0; y = pos ? y : y * 0;")

_BN_EVAL_RELU = ("T x, T running_mean, T running_var, T eps, T weight, T bias", "T y",
                 "y = (x - running_mean) * (1 / sqrt(running_var + eps)) * weight + bias; "
                 "T pos = y > 0; y = pos ? y : y * 0;")

_RELU_GRAD_PRODUCT = ("T dout, T y, T xhat", "T g, T gx",
                      "T pos = y > 0; g = pos ? dout : dout * 0; gx = g * xhat;")


def squared_deviation(x, mu):
    """(x - mu)^2, elementwise."""
    return elementwise_kernel("gpucnn_squared_deviation", *_SQUARED_DEVIATION)(x, mu)


def batch_norm_stats(sum_sq, m, eps, mu, running_mean, running_var, factor):
    """(inv_std, new running_mean, new running_var) of a training batch of m
    values per channel, from the per-channel sum of squared deviations."""
    consts = _scalars(sum_sq.dtype, 1.0 / m, eps)
    rest = _scalars(sum_sq.dtype, factor, 1 - factor, m / (m - 1))
    return elementwise_kernel("gpucnn_bn_stats", *_BN_STATS)(
        sum_sq, *consts, mu, running_mean, running_var, *rest)


def batch_norm_normalize(x, mu, inv_std, weight, bias):
    """(xhat, y) = ((x - mu) inv_std, xhat weight + bias)."""
    return elementwise_kernel("gpucnn_bn_normalize", *_BN_NORMALIZE)(x, mu, inv_std, weight, bias)


def batch_norm_eval(x, running_mean, running_var, eps, weight, bias):
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
    return elementwise_kernel("gpucnn_bn_eval", *_BN_EVAL)(
        x, running_mean, running_var, x.dtype.type(eps), weight, bias)


def batch_norm_backward(dout, xhat, dweight, dbias, m, weight, inv_std):
    """dx = weight inv_std (dout - dbias/m - xhat dweight/m)."""
    return elementwise_kernel("gpucnn_bn_backward", *_BN_BACKWARD)(
        dout, xhat, dweight, dbias, dout.dtype.type(1.0 / m), weight, inv_std)


def batch_norm_normalize_relu(x, mu, inv_std, weight, bias):
    """(xhat, relu(xhat weight + bias))."""
    return elementwise_kernel("gpucnn_bn_normalize_relu", *_BN_NORMALIZE_RELU)(x, mu, inv_std, weight, bias)


def batch_norm_eval_relu(x, running_mean, running_var, eps, weight, bias):
    """relu of batch_norm_eval's y."""
    return elementwise_kernel("gpucnn_bn_eval_relu", *_BN_EVAL_RELU)(
        x, running_mean, running_var, x.dtype.type(eps), weight, bias)


def relu_grad_product(dout, y, xhat):
    """(g, g * xhat) with g = dout * [y > 0]: a fused ReLU's backward and the
    product batch norm's backward sums, in one launch."""
    return elementwise_kernel("gpucnn_relu_grad_product", *_RELU_GRAD_PRODUCT)(dout, y, xhat)
