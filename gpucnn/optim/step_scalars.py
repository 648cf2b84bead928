"""Per-step optimizer scalars in device memory, for CUDA-graph replay.

A captured CUDA graph replays its kernel launches with the arguments they
had at capture, so a learning rate or an Adam bias correction passed as a
kernel argument would stay frozen at the captured step. In capturable mode
(torch's name) the update reads them from one small device vector instead:

    scalars = gpucnn.optim.capturable(optimizer)     # optimizer.step() now = fill() + apply()
    scalars.fill()    # host: this step's values (schedule, warmup, step count t), into the vector
    scalars.apply()   # device: the updates, reading the vector (what a graph captures)

fill() computes exactly the Python floats the eager update computes and
stores them in the parameters' dtype (as NumPy casts a Python scalar), so the
updates are bitwise those of the eager path on the CPU (the same per-device
kernels, optim_cpu's Numba or fused_gpu's launches, or the same array code,
chosen as Optimizer.step chooses; the CPU kernels read the 0-d values when
called, the GPU launches take them as arguments). On the GPU the vector
is filled by an asynchronous host->device copy on the compute stream, ordered
before the next launch or replay (no wait for the device); the fused kernels
take the 0-d views as arguments (compiled and emulated, not yet run on a GPU).

Per parameter slot, what is read from device memory:
    SGD          lr                       (momentum, dampening, weight_decay: fixed at capture)
    Adam/AdamW   decay = 1 - lr wd (AdamW; 1 for Adam),
                 step_size = lr / (1 - beta1^t),  sqrt_bc2 = sqrt(1 - beta2^t)
                                          (betas, eps, weight_decay: fixed at capture)
Supported: SGD (every variant) and Adam/AdamW without amsgrad, all parameters
of one dtype, every parameter stepped every step (a graph's case).
"""
import math

import numpy as np

from .. import backend
from .optimizers import SGD, Adam, _fused_kernels, _l2, _zeros_like


_NAMES = {SGD: ("lr",), Adam: ("decay", "step_size", "sqrt_bc2")}


def _kind(optimizer):
    for cls in _NAMES:
        if isinstance(optimizer, cls):
            return cls
    raise TypeError(f"capturable: {type(optimizer).__name__} is not supported (SGD, Adam, AdamW are)")


def capturable(optimizer):
    """Switch `optimizer` to device-memory per-step scalars -> its StepScalars."""
    if optimizer.step_scalars is None:
        optimizer.step_scalars = StepScalars(optimizer)
    return optimizer.step_scalars


class StepScalars:
    def __init__(self, optimizer):
        self.kind = _kind(optimizer)
        if self.kind is Adam and any(g["amsgrad"] for g in optimizer.param_groups):
            raise TypeError("capturable: amsgrad is not supported")
        self.optimizer = optimizer
        self.entries = [(p, group) for group in optimizer.param_groups for p in group["params"]]
        dtypes = {p.data.dtype for p, _ in self.entries}
        if len(dtypes) != 1:
            raise TypeError(f"capturable: all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        self.names = _NAMES[self.kind]
        self._place()
        self._first = {}

    def _place(self):
        """The host vector and its device copy (the same array on the CPU), and
        each parameter's 0-d views into the device copy."""
        k, first = len(self.names), self.entries[0][0].data
        self.host = np.zeros(len(self.entries) * k, self.dtype)
        self.device = backend.to_gpu(self.host) if backend.is_gpu_array(first) else self.host
        self.views = [{name: self.device[i * k + j:i * k + j + 1].reshape(()) for j, name in enumerate(self.names)}
                      for i in range(len(self.entries))]

    def arrays(self):
        """The device arrays the update reads (kept alive by a graph)."""
        return [self.device]

    def step(self):
        self.fill()
        self.apply()

    # ---- host side ---------------------------------------------------------
    def fill(self):
        """This step's scalars of every parameter into device memory (host work
        only; on the GPU an asynchronous copy ordered before the next launch)."""
        if backend.is_gpu_array(self.entries[0][0].data) != backend.is_gpu_array(self.device):
            self._place()                               # the model moved since
        k = len(self.names)
        for i, (p, group) in enumerate(self.entries):
            state = self.optimizer._state(p)
            values = self._values(p, group, state)
            self.host[i * k:(i + 1) * k] = values
        if self.device is not self.host:
            backend.copy_to_device_async(self.device, self.host)

    def _values(self, p, group, state):
        if self.kind is SGD:
            self._first[id(p)] = group["momentum"] and "momentum_buffer" not in state
            return [group["lr"]]
        if "exp_avg" not in state:
            state["step"] = 0.0
            state["exp_avg"] = _zeros_like(p.data)
            state["exp_avg_sq"] = _zeros_like(p.data)
        state["step"] += 1
        t, lr, (beta1, beta2) = state["step"], group["lr"], group["betas"]
        decay = 1 - lr * group["weight_decay"] if self.optimizer.decoupled_weight_decay else 1.0
        return [decay, lr / (1 - beta1 ** t), math.sqrt(1 - beta2 ** t)]

    # ---- device side (what a graph captures) --------------------------------
    def apply(self):
        for (p, group), views in zip(self.entries, self.views):
            if p.grad is None:
                raise RuntimeError("capturable: every parameter needs a gradient at each step "
                                   f"(a parameter of shape {p.shape} has none)")
            state = self.optimizer._state(p)
            if self.kind is SGD:
                self._sgd(p, p.grad, state, group, views["lr"])
            else:
                self._adam(p, p.grad, state, group, views)

    def _sgd(self, p, g, state, group, lr):
        momentum, first = group["momentum"], self._first.get(id(p), False)
        kernels = momentum and _fused_kernels(p.data, g, *((state["momentum_buffer"],) if not first else ()))
        if kernels:                          # the eager path's fused kernel, as Optimizer.step picks it
            if first:
                state["momentum_buffer"] = backend.get_array_module(p.data).empty_like(p.data)
            consts = (p.data.dtype.type(v) for v in (group["weight_decay"], momentum, 1 - group["dampening"]))
            kernels.sgd_momentum_step_with(p.data, g, state["momentum_buffer"], lr, *consts,
                                           nesterov=group["nesterov"], first=first)
            return
        self.optimizer._update(p, g, state, group, lr=lr)   # the eager array code, lr from the device

    def _adam(self, p, g, state, group, views):
        (beta1, beta2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
        decoupled = self.optimizer.decoupled_weight_decay
        m, v = state["exp_avg"], state["exp_avg_sq"]
        kernels = _fused_kernels(p.data, g, m, v)
        if kernels:
            consts = [p.data.dtype.type(c) for c in (0.0 if decoupled else wd, beta1, 1 - beta1, beta2, 1 - beta2, eps)]
            kernels.adam_step_with(p.data, g, m, v, consts[0], views["decay"], *consts[1:5],
                                   views["step_size"], views["sqrt_bc2"], consts[5])
            return
        xp = backend.get_array_module(p.data)
        if decoupled:
            p.data *= views["decay"]
        else:
            g = _l2(p, g, wd)
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        denom = xp.sqrt(v) / views["sqrt_bc2"] + eps
        p.data -= views["step_size"] * m / denom
