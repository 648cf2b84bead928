"""Numerical gradient checking in float64 (central differences).

For a fixed random output gradient G the scalar L = sum(f(x) * G) has
dL/dx = backward(G), so every backward can be checked element by element:

    numeric[i] = (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)     (error O(eps^2))
    relative error[i] = |analytic[i] - numeric[i]| / max(|analytic[i]|, |numeric[i]|, floor)

The floor keeps elements whose gradient is ~0 from dividing rounding noise
by ~0 (below it the check is absolute: |error| <= tol * floor). L is summed
exactly (math.fsum), so the noise is that of the perturbed outputs alone:
about 1e-10 absolute with the defaults eps=1e-5, tol=1e-5, floor=1e-4. The
check passes when every input's and parameter's worst relative error is at
most `tol`. Inputs near a kink (ReLU at 0, ties
in a max-pool window) give large errors by nature; test away from them.

    ok, report = gradcheck(layer, x)          # a Module: input and every parameter
    ok, report = gradcheck(f, (x, w), backward=f_backward)
                                              # a function: f_backward(G, x, w) -> (dx, dw)
    print(report)                             # a table of worst errors per tensor

A Module is checked on a float64 CPU copy in training mode (the caller's
module is untouched); stochastic layers see the same random numbers in every
forward (gpucnn.random's state is replayed, then restored at the end).
"""
import copy
import math

import numpy as np

from . import backend
from . import random as grandom
from .nn.module import Module, no_grad


class GradcheckEntry:
    def __init__(self, name, shape, checked, worst_relative, worst_index, max_abs):
        self.name, self.shape, self.checked = name, shape, checked
        self.worst_relative, self.worst_index, self.max_abs = worst_relative, worst_index, max_abs


class GradcheckReport:
    """entries: one GradcheckEntry per input and parameter; ok: all within tol."""

    def __init__(self, entries, tol, eps):
        self.entries, self.tol, self.eps = entries, tol, eps

    @property
    def ok(self):
        return all(e.worst_relative <= self.tol for e in self.entries)

    @property
    def worst(self):
        return max((e.worst_relative for e in self.entries), default=0.0)

    def __getitem__(self, name):
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def __str__(self):
        rows = [f"{'tensor':<24}{'shape':<20}{'checked':>8}  {'worst rel err':>13}  {'max abs err':>11}  worst at"]
        for e in self.entries:
            flag = "" if e.worst_relative <= self.tol else "  FAIL"
            rows.append(f"{e.name:<24}{e.shape!s:<20}{e.checked:>8}  {e.worst_relative:>13.3e}  "
                        f"{e.max_abs:>11.3e}  {e.worst_index}{flag}")
        rows.append(f"{'PASS' if self.ok else 'FAIL'} (tol {self.tol:g}, eps {self.eps:g})")
        return "\n".join(rows)


def _float64(a):
    return np.array(backend.to_cpu(a), dtype=np.float64)


def _compare(name, analytic, numeric, indices, shape, floor):
    a, n = analytic[indices], numeric
    err = np.abs(a - n)
    rel = err / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
    if not rel.size:
        return GradcheckEntry(name, shape, 0, 0.0, None, 0.0)
    worst = int(np.argmax(rel))
    index = tuple(int(i) for i in np.unravel_index(indices[worst], shape))
    return GradcheckEntry(name, shape, int(rel.size), float(rel[worst]), index, float(err.max()))


def gradcheck(target, inputs, *, backward=None, eps=1e-5, tol=1e-5, floor=1e-4, max_elements=None, seed=0):
    """Check `target`'s backward against central differences -> (ok, report).

    target: a Module (its `backward` and every parameter are checked) or a
        function of the inputs (then `backward(G, *inputs)` must return one
        gradient per input, or a single array for one input).
    inputs: an array or a tuple of arrays (cast to float64 on the CPU).
    max_elements: check at most this many randomly chosen elements per tensor.
    seed: picks G and the checked elements (a local generator).
    """
    inputs = [_float64(x) for x in (inputs if isinstance(inputs, (tuple, list)) else (inputs,))]
    local = np.random.default_rng(seed)
    saved_rng = grandom.get_state()

    if isinstance(target, Module):
        if len(inputs) != 1:
            raise ValueError(f"gradcheck: a Module takes one input, got {len(inputs)}")
        module = copy.deepcopy(target).to_cpu().double().train()
        params = list(module.named_parameters())
        fn = module
    else:
        if backward is None:
            raise TypeError("gradcheck: checking a function needs backward=f(G, *inputs) -> gradients")
        module, params, fn = None, [], target

    def forward(*xs):
        grandom.set_state(saved_rng)  # the same random numbers (dropout masks) every time
        return fn(*xs)

    try:
        y = forward(*inputs)  # a Module caches for its backward here
        G = local.standard_normal(np.shape(y))
        if module is not None:
            analytic = [module.backward(G)] + [np.zeros_like(p.data) if p.grad is None else p.grad
                                               for _, p in params]
        else:
            grads = backward(G, *inputs)
            analytic = list(grads) if isinstance(grads, (tuple, list)) else [grads]
            if len(analytic) != len(inputs):
                raise ValueError(f"gradcheck: backward returned {len(analytic)} gradients for {len(inputs)} inputs")
        analytic = [_float64(a) for a in analytic]

        def loss():
            with no_grad():
                # fsum: exact, so outputs that the perturbation leaves alone cancel exactly
                return math.fsum((_float64(forward(*inputs)) * G).ravel())

        tensors = [(f"input {i}" if len(inputs) > 1 else "input", x) for i, x in enumerate(inputs)]
        tensors += [(name, p.data) for name, p in params]
        entries = []
        for (name, array), grad in zip(tensors, analytic):
            if grad.shape != array.shape:
                raise ValueError(f"gradcheck: gradient of {name} has shape {grad.shape}, expected {array.shape}")
            flat = array.reshape(-1)  # a view: perturbing it perturbs the tensor
            indices = np.arange(flat.size)
            if max_elements is not None and flat.size > max_elements:
                indices = np.sort(local.choice(flat.size, size=max_elements, replace=False))
            numeric = np.empty(indices.size)
            for j, i in enumerate(indices):
                original = flat[i]
                flat[i] = original + eps
                plus = loss()
                flat[i] = original - eps
                minus = loss()
                flat[i] = original
                numeric[j] = (plus - minus) / (2 * eps)
            entries.append(_compare(name, grad.reshape(-1), numeric, indices, array.shape, floor))
    finally:
        grandom.set_state(saved_rng)
    report = GradcheckReport(entries, tol, eps)
    return report.ok, report
