"""Optimizers with torch.optim's names, hyperparameter names, defaults and
update formulas (maximize/foreach/fused/capturable are not offered).

Every update is in place on `p.data`; `g` is `p.grad`, `t` the step count
(from 1) and `wd` weight_decay (L2: g <- g + wd * p, except AdamW).

SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False)
    b <- g on the first step, then b <- momentum * b + (1 - dampening) * g
    p <- p - lr * (g + momentum * b)     if nesterov
    p <- p - lr * b                       otherwise (p - lr * g without momentum)
  Course mapping, with rho = momentum, alpha = lr, dampening 0:
    - momentum "v = rho v - alpha grad; x += v" is this with v = -lr * b
      (identical while lr is constant);
    - Nesterov "v = rho v - alpha grad f(x + rho v); x += v": substituting
      x~ = x + rho v (the look-ahead point the parameters then hold) gives
      x~ <- x~ - alpha grad f(x~) + rho v_new, i.e. with b = -v / alpha:
      b <- rho b + g,  x~ <- x~ - alpha (g + rho b) -- torch's nesterov form.
Adagrad(params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10)
    s <- s + g^2,   p <- p - lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)
RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False)
    s <- alpha s + (1 - alpha) g^2                 (the course's decay_rate is alpha)
    centered: m <- alpha m + (1 - alpha) g, d = sqrt(s - m^2) + eps; else d = sqrt(s) + eps
    momentum > 0: b <- momentum b + g / d, p <- p - lr b;  else p <- p - lr g / d
Adadelta(params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0)
    s <- rho s + (1 - rho) g^2
    u = sqrt(a + eps) / sqrt(s + eps) * g,  a <- rho a + (1 - rho) u^2,  p <- p - lr u
Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2     (the course's first/second moments)
    amsgrad: vmax <- max(vmax, v) and vmax replaces v below
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)   (bias correction)
AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)
    p <- p (1 - lr wd) (decoupled decay), then Adam's update without the L2 term.

Per-device implementations, chosen once per parameter from its arrays by one
table (Optimizer._fused_kernels): SGD with momentum and Adam/AdamW (without
amsgrad) run their update as one fused pass per parameter, a CuPy launch on
the GPU (gpucnn.fused_gpu) and a Numba kernel on the CPU (optim_cpu, split
across threads), both with the same signatures and the formulas above; the
other optimizers and mixed dtypes run the array code (`_update`).

`params` is a list of Parameters (model.parameters()) or of dicts
{'params': [...], <hyperparameter overrides>} (parameter groups, as in torch).
state_dict() is torch's layout: {'state': {index: {name: array or number}},
'param_groups': [{hyperparameters..., 'params': [indices]}]}.
"""
import copy
import math
from typing import ClassVar

from .. import backend, fused_gpu
from ..nn.module import Parameter
from . import optim_cpu

_FUSED = {"cpu": optim_cpu, "gpu": fused_gpu}   # same functions, same signatures


def _fused_kernels(*arrays):
    """optim_cpu or fused_gpu when every array is on one device in one dtype
    (and C-contiguous on the CPU: its kernels run over flat views), else None."""
    device = backend.one_device_and_dtype(*arrays)
    if device == "cpu" and not all(a.flags.c_contiguous for a in arrays):
        return None
    return _FUSED.get(device)


class Optimizer:
    defaults: ClassVar[dict] = {}

    def __init__(self, params, **hyperparameters):
        unknown = set(hyperparameters) - set(type(self).defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyperparameter(s) {sorted(unknown)}")
        self.defaults = {**type(self).defaults, **hyperparameters}
        self._check(self.defaults)
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        for group in params:
            group = dict(group)
            group["params"] = list(group["params"])
            unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
            if unknown:
                raise TypeError(f"{type(self).__name__}: unknown hyperparameter(s) {sorted(unknown)}")
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{type(self).__name__}: expected Parameters, got {type(p).__name__}")
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            self._check(group)
            self.param_groups.append(group)
        self.state = {}  # id(Parameter) -> {name: array or number}

    def _check(self, group):
        for key in ("lr", "weight_decay", "momentum", "eps", "lr_decay"):
            if key in group and group[key] < 0:
                raise ValueError(f"{type(self).__name__}: {key} must be >= 0, got {group[key]}")

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self):
        for p in self._params():
            p.grad = None

    def _state(self, p):
        """The state of `p`, moved to p's device if the model moved since."""
        state = self.state.setdefault(id(p), {})
        on_gpu = backend.is_gpu_array(p.data)
        for key, value in state.items():
            if hasattr(value, "shape") and backend.is_gpu_array(value) != on_gpu:
                state[key] = backend.to_gpu(value) if on_gpu else backend.to_cpu(value)
        return state

    step_scalars = None  # gpucnn.optim.step_scalars.capturable() sets it: per-step scalars in device memory

    def step(self):
        if self.step_scalars is not None:
            return self.step_scalars.step()
        for group in self.param_groups:
            fusable = self._fusable(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                kernels = fusable and _fused_kernels(p.data, p.grad, *self._fused_state(p, state))
                if kernels:
                    self._update_fused(kernels, p, p.grad, state, group)
                else:
                    self._update(p, p.grad, state, group)

    def _fusable(self, group):
        """Whether this group's update has a fused kernel (see _update_fused)."""
        return False

    def _fused_state(self, p, state):
        """The state arrays the fused kernel updates in place (created if new)."""
        return ()

    def _update_fused(self, kernels, p, g, state, group):
        """The update as one pass of `kernels` (optim_cpu or fused_gpu)."""
        raise NotImplementedError

    def _update(self, p, g, state, group):
        """The update as array code (any device, any dtypes)."""
        raise NotImplementedError

    def state_dict(self):
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[key]: {k: v.copy() if hasattr(v, "shape") else v for k, v in value.items()}
                 for key, value in self.state.items() if key in index}
        groups = []
        for group in self.param_groups:
            saved = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            saved["params"] = [index[id(p)] for p in group["params"]]
            groups.append(saved)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state (matched by index,
        as torch does); arrays are moved to each parameter's device and dtype."""
        name = type(self).__name__
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)):
            raise ValueError(f"{name}.load_state_dict: the saved parameter groups "
                             f"{[len(g['params']) for g in groups]} do not match this optimizer's "
                             f"{[len(g['params']) for g in self.param_groups]}")
        params = {}
        for saved, mine in zip(groups, self.param_groups):
            for i, p in zip(saved["params"], mine["params"]):
                params[int(i)] = p
            mine.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, entries in state_dict["state"].items():
            p = params[int(i)]
            restored = {}
            for key, value in entries.items():
                if hasattr(value, "shape") and value.shape == p.data.shape:
                    value = backend.to_cpu(value).astype(p.data.dtype)
                    value = backend.to_gpu(value) if backend.is_gpu_array(p.data) else value
                elif hasattr(value, "shape"):
                    raise ValueError(f"{name}.load_state_dict: state {key!r} of parameter {i} has shape "
                                     f"{tuple(value.shape)}, the parameter {p.shape}")
                restored[key] = value
            self.state[id(p)] = restored

    def __repr__(self):
        hyper = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({hyper})"


def _zeros_like(a):
    return backend.get_array_module(a).zeros_like(a)


def _l2(p, g, weight_decay):
    """g + wd * p (a new array, so p.grad itself is never modified)."""
    return g + weight_decay * p.data if weight_decay else g


class SGD(Optimizer):
    defaults: ClassVar[dict] = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                                "nesterov": False}

    def _check(self, group):
        super()._check(group)
        if group.get("nesterov") and (group.get("momentum", 0) <= 0 or group.get("dampening", 0) != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")

    def _fusable(self, group):
        return bool(group["momentum"])

    def _update_fused(self, kernels, p, g, state, group):
        buf = state.get("momentum_buffer")
        first = buf is None
        if first:  # the kernel sets it to g; kept only once that call went through
            buf = backend.get_array_module(p.data).empty_like(p.data)
        kernels.sgd_momentum_step(p.data, g, buf, lr=group["lr"], weight_decay=group["weight_decay"],
                                  momentum=group["momentum"], dampening=group["dampening"],
                                  nesterov=group["nesterov"], first=first)
        state["momentum_buffer"] = buf

    def _fused_state(self, p, state):
        return (state["momentum_buffer"],) if "momentum_buffer" in state else ()

    def _update(self, p, g, state, group, lr=None):
        """The array code; `lr` overrides group["lr"] (a device scalar under optim.capturable)."""
        momentum = group["momentum"]
        g = _l2(p, g, group["weight_decay"])
        if momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.copy()
            else:
                b = state["momentum_buffer"]
                b *= momentum
                b += (1 - group["dampening"]) * g
            b = state["momentum_buffer"]
            g = g + momentum * b if group["nesterov"] else b
        p.data -= (group["lr"] if lr is None else lr) * g


class Adagrad(Optimizer):
    defaults: ClassVar[dict] = {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0,
                                "eps": 1e-10}

    def _update(self, p, g, state, group):
        if "sum" not in state:
            state["step"] = 0.0
            state["sum"] = _zeros_like(p.data) + group["initial_accumulator_value"]
        state["step"] += 1
        g = _l2(p, g, group["weight_decay"])
        clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        s = state["sum"]
        s += g * g
        xp = backend.get_array_module(p.data)
        p.data -= clr * g / (xp.sqrt(s) + group["eps"])


class RMSprop(Optimizer):
    defaults: ClassVar[dict] = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                                "centered": False}

    def _update(self, p, g, state, group):
        if "square_avg" not in state:
            state["step"] = 0.0
            state["square_avg"] = _zeros_like(p.data)
            if group["momentum"] > 0:
                state["momentum_buffer"] = _zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = _zeros_like(p.data)
        state["step"] += 1
        xp = backend.get_array_module(p.data)
        alpha = group["alpha"]
        g = _l2(p, g, group["weight_decay"])
        s = state["square_avg"]
        s *= alpha
        s += (1 - alpha) * g * g
        if group["centered"]:
            m = state["grad_avg"]
            m *= alpha
            m += (1 - alpha) * g
            denom = xp.sqrt(s - m * m) + group["eps"]
        else:
            denom = xp.sqrt(s) + group["eps"]
        if group["momentum"] > 0:
            b = state["momentum_buffer"]
            b *= group["momentum"]
            b += g / denom
            p.data -= group["lr"] * b
        else:
            p.data -= group["lr"] * g / denom


class Adadelta(Optimizer):
    defaults: ClassVar[dict] = {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0}

    def _update(self, p, g, state, group):
        if "square_avg" not in state:
            state["step"] = 0.0
            state["square_avg"] = _zeros_like(p.data)
            state["acc_delta"] = _zeros_like(p.data)
        state["step"] += 1
        xp = backend.get_array_module(p.data)
        rho, eps = group["rho"], group["eps"]
        g = _l2(p, g, group["weight_decay"])
        s, a = state["square_avg"], state["acc_delta"]
        s *= rho
        s += (1 - rho) * g * g
        delta = xp.sqrt(a + eps) / xp.sqrt(s + eps) * g
        a *= rho
        a += (1 - rho) * delta * delta
        p.data -= group["lr"] * delta


class Adam(Optimizer):
    defaults: ClassVar[dict] = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    decoupled_weight_decay = False

    def _check(self, group):
        super()._check(group)
        betas = group.get("betas", (0.9, 0.999))
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")

    def _fusable(self, group):
        return not group["amsgrad"]

    def _fused_state(self, p, state):
        self._init_state(p, state, amsgrad=False)
        return state["exp_avg"], state["exp_avg_sq"]

    def _init_state(self, p, state, amsgrad):
        if "exp_avg" not in state:
            state["step"] = 0.0
            state["exp_avg"] = _zeros_like(p.data)
            state["exp_avg_sq"] = _zeros_like(p.data)
            if amsgrad:
                state["max_exp_avg_sq"] = _zeros_like(p.data)

    def _update_fused(self, kernels, p, g, state, group):
        state["step"] += 1
        (beta1, beta2), lr = group["betas"], group["lr"]
        kernels.adam_step(p.data, g, state["exp_avg"], state["exp_avg_sq"], lr=lr, beta1=beta1, beta2=beta2,
                          eps=group["eps"], weight_decay=group["weight_decay"],
                          decoupled=self.decoupled_weight_decay, t=state["step"])

    def _update(self, p, g, state, group):
        self._init_state(p, state, group["amsgrad"])
        state["step"] += 1
        t = state["step"]
        (beta1, beta2), lr = group["betas"], group["lr"]
        xp = backend.get_array_module(p.data)
        if self.decoupled_weight_decay:
            p.data *= 1 - lr * group["weight_decay"]
        else:
            g = _l2(p, g, group["weight_decay"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        if group["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        denom = xp.sqrt(v) / math.sqrt(bias_correction2) + group["eps"]
        p.data -= (lr / bias_correction1) * m / denom


class AdamW(Adam):
    defaults: ClassVar[dict] = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False}
    decoupled_weight_decay = True
