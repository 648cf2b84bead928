"""Fused CPU optimizer updates: one Numba pass per parameter, in place.

The same formulas and signatures as the GPU's fused launches
(gpucnn.fused_gpu.sgd_momentum_step / adam_step), so that the optimizers
choose between them by device alone. As array code each update is 5-15
NumPy operations with temporaries, each a pass over the parameter; here it
is one pass, split into contiguous chunks across threads for large
parameters (cpu_parallel.over_items). The constants are computed on the
host and cast to the parameter's dtype, and each element is computed in that
dtype, as NumPy computes `p -= lr * g` for a float32 p. Elementwise: results
do not depend on the thread count. Results can differ from the array code in
the last bits (e.g. NumPy's `g + wd * p` makes no temporary here, and LLVM may
contract a*b+c into a fused multiply-add).
"""
import numba as nb
import numpy as np

from ..cpu_parallel import over_items


@nb.njit(nogil=True, cache=True)
def _sgd(p, g, b, lr, wd, momentum, one_minus_dampening, first, nesterov, i0, i1):
    p, g, b = p[i0:i1], g[i0:i1], b[i0:i1]   # views from 0: vectorized (see elementwise_cpu)
    for i in range(p.size):
        gg = g[i] + wd * p[i]
        bi = gg if first else b[i] * momentum + one_minus_dampening * gg
        b[i] = bi
        p[i] = p[i] - lr * (gg + momentum * bi if nesterov else bi)


@nb.njit(nogil=True, cache=True)
def _adam(p, g, m, v, wd, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, sqrt_bc2,
          eps, i0, i1):
    p, g, m, v = p[i0:i1], g[i0:i1], m[i0:i1], v[i0:i1]
    for i in range(p.size):
        gg = g[i] + wd * p[i]                  # L2 term (wd = 0 for AdamW)
        pi = p[i] * decay                      # decoupled decay (1 for Adam)
        mi = m[i] * beta1 + one_minus_beta1 * gg
        vi = v[i] * beta2 + one_minus_beta2 * gg * gg
        m[i], v[i] = mi, vi
        p[i] = pi - step_size * mi / (np.sqrt(vi) / sqrt_bc2 + eps)


def _flat(a):
    """A 1-D view of a C-contiguous array (the parameters and states are)."""
    return a.reshape(-1)


def _scalars(dtype, *values):
    return tuple(dtype.type(v) for v in values)


def sgd_momentum_step(p, g, b, *, lr, weight_decay, momentum, dampening, nesterov, first):
    """SGD with momentum; `first` makes b <- g (torch's first step)."""
    consts = _scalars(p.dtype, weight_decay, momentum, 1 - dampening)
    sgd_momentum_step_with(p, g, b, p.dtype.type(lr), *consts, nesterov=nesterov, first=first)


def _value(c):
    """A constant given as a scalar or as a 0-d array (gpucnn.optim.step_scalars
    keeps per-step ones in memory; on the CPU the kernel reads it at the call)."""
    return c[()] if isinstance(c, np.ndarray) else c


def sgd_momentum_step_with(p, g, b, lr, wd, momentum, one_minus_dampening, *, nesterov, first):
    """The SGD-momentum kernel with its constants given (fused_gpu's signature)."""
    g = np.ascontiguousarray(g, p.dtype)
    over_items(_sgd, p.size, 3 * p.size, _flat(p), _flat(g), _flat(b),
               *(_value(c) for c in (lr, wd, momentum, one_minus_dampening)), bool(first), bool(nesterov))


def adam_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """Adam (decoupled=False) or AdamW step t (from 1), without amsgrad."""
    bias_correction1, bias_correction2 = 1 - beta1 ** t, 1 - beta2 ** t
    wd, decay = (0.0, 1 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    adam_step_with(p, g, m, v, *_scalars(p.dtype, wd, decay, beta1, 1 - beta1, beta2, 1 - beta2,
                                         lr / bias_correction1, np.sqrt(bias_correction2), eps))


def adam_step_with(p, g, m, v, *consts):
    """The Adam kernel with its constants given (fused_gpu's signature and order)."""
    g = np.ascontiguousarray(g, p.dtype)
    over_items(_adam, p.size, 4 * p.size, _flat(p), _flat(g), _flat(m), _flat(v), *map(_value, consts))
