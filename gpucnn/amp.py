"""Mixed precision training, in the spirit of torch.amp.

    policy = gpucnn.amp.autocast(model, "bf16")     # or "fp32", "tf32", "fp16"
    scaler = gpucnn.amp.GradScaler()                 # for fp16
    ...  logits = model(x)                            # conv/pool/linear in bf16/fp16
         loss, dlogits = loss_fn(logits.astype(np.float32), y)      # the loss in fp32
         model.backward(scaler.scale(dlogits))
         scaler.step(optimizer); scaler.update()
    policy.remove()

Trainer(..., precision="bf16") and `gpucnn train --precision bf16` do all of
this. What each precision means:
    fp32   nothing changes (float32 convolutions at the "highest" precision)
    tf32   float32 arrays; convolutions at the "high" precision (TF32 tensor cores on the GPU)
    bf16   conv, pool and linear layers take operands rounded to bfloat16 (8-bit
           mantissa; round to nearest even), accumulate in float32 and round
           their outputs and their incoming gradients to bfloat16, stored in
           float32 arrays; on the GPU the convolutions run at the "medium"
           precision (BF16 operands, FP32 accumulation)
    fp16   conv, pool and linear layers compute on float16 arrays (the
           functional ops accumulate in float32, results in float16); use a
           GradScaler so small gradients do not flush to zero
In every mode the parameters stay float32 master weights (the optimizer and
its state see only them): a low-precision layer casts its weights for each
forward and adds its float32-cast weight gradients into the master `.grad`.
Batch norm and dropout run in float32 (their input is cast up), and so does
the loss (the Trainer casts the logits up).

The policy is installed per layer instance (forward/backward overrides,
removed by remove()), so the model's classes, state_dict keys and
checkpoints are those of the float32 model.

GradScaler(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
growth_interval=2000, enabled=True), torch.amp.GradScaler's semantics:
    scale(dlogits) = dlogits * S         (we scale the loss gradient: no autograd)
    unscale_(opt):   g <- g * float32(1 / S) for every gradient (1/S in float64,
                     then float32, as torch); found_inf = any non-finite g
    step(opt):       unscale_ if not done; skip opt.step() when found_inf
    update():        found_inf: S <- S * backoff_factor, tracker <- 0
                     else tracker += 1; tracker == growth_interval:
                     S <- S * growth_factor (if finite), tracker <- 0
step() reads found_inf on the host (one device->host read per step, as
torch's GradScaler.step does).
"""
import contextlib
import math

import numpy as np

from . import backend, precision as conv_precision
from .nn.conv import _ConvNd
from .nn.dropout import Dropout
from .nn.linear import Linear
from .nn.norm import _BatchNorm
from .nn.pool import _AdaptivePoolNd, _PoolNd

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_CONV_PRECISION = {"fp32": None, "tf32": "high", "bf16": "medium", "fp16": None}
_LOW_LAYERS = (_ConvNd, Linear, _PoolNd, _AdaptivePoolNd)
_FP32_LAYERS = (_BatchNorm, Dropout)   # Dropout: its random draws are float32


def round_to_bfloat16(a):
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32:
    the top 16 bits of each value after adding half an ulp of bfloat16 (plus the
    lowest kept bit, for ties); NaN stays NaN."""
    xp = backend.get_array_module(a)
    a = xp.ascontiguousarray(a, dtype=xp.float32)
    bits = a.view(xp.uint32)
    rounded = (bits + (xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1)))) & xp.uint32(0xFFFF0000)
    return xp.where(xp.isnan(a), a, rounded.view(xp.float32))


def check(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"gpucnn.amp: precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


class autocast:  # noqa: N801 (torch's name)
    """Install the `precision` policy on the conv/pool/linear and batch-norm
    layers of `model` (see the module docstring); remove() undoes it."""

    def __init__(self, model, precision="bf16"):
        self.model, self.precision = model, check(precision)
        self.layers = []
        for _, module in model.named_modules():
            if precision == "tf32" and isinstance(module, _ConvNd):
                self._install(module, self._tf32_forward, self._tf32_backward)
            elif precision in ("bf16", "fp16") and isinstance(module, _LOW_LAYERS):
                self._install(module, self._low_forward, self._low_backward)
            elif precision in ("bf16", "fp16") and isinstance(module, _FP32_LAYERS):
                self._install(module, self._fp32_forward, self._fp32_backward)

    # ---- casts ---------------------------------------------------------------
    def low(self, a):
        """An activation/weight in this policy's low precision."""
        if self.precision == "fp16":
            return a.astype(np.float16, copy=False)
        return round_to_bfloat16(a)

    @contextlib.contextmanager
    def conv_precision(self):
        """The float32 conv precision of this policy, around a layer's call."""
        mode = _CONV_PRECISION[self.precision]
        if mode is None:
            yield
        else:
            with conv_precision.float32_conv_precision(mode):
                yield

    # ---- per-layer overrides -------------------------------------------------
    def _install(self, module, forward, backward):
        cls = type(module)
        object.__setattr__(module, "forward", lambda x: forward(module, cls, x))
        object.__setattr__(module, "backward", lambda dout: backward(module, cls, dout))
        self.layers.append(module)

    @contextlib.contextmanager
    def _low_weights(self, module, copies=None):
        """The layer's parameters hold low-precision copies inside the block
        (made fresh at forward, reused by its backward); the float32 masters come
        back on exit, and gradients the layer created are cast to float32."""
        params = list(module._parameters.values())
        masters = [p.data for p in params]
        had_grad = [p.grad is not None for p in params]
        if copies is None:
            copies = [self.low(m) for m in masters]
        for p, low in zip(params, copies):
            p.data = low
        try:
            yield copies
        finally:
            for p, master, had in zip(params, masters, had_grad):
                p.data = master
                if p.grad is not None and not had:
                    p.grad = p.grad.astype(master.dtype)

    def _low_forward(self, module, cls, x):
        with self._low_weights(module) as copies, self.conv_precision():
            y = cls.forward(module, self.low(x))
        object.__setattr__(module, "_amp_copies", copies if module._caching() else None)
        return y if self.precision == "fp16" else round_to_bfloat16(y)

    def _low_backward(self, module, cls, dout):
        with self._low_weights(module, module.__dict__.get("_amp_copies")), self.conv_precision():
            dx = cls.backward(module, self.low(dout))
        object.__setattr__(module, "_amp_copies", None)
        return dx if self.precision == "fp16" else round_to_bfloat16(dx)

    def _tf32_forward(self, module, cls, x):
        with self.conv_precision():
            return cls.forward(module, x)

    def _tf32_backward(self, module, cls, dout):
        with self.conv_precision():
            return cls.backward(module, dout)

    @staticmethod
    def _fp32_forward(module, cls, x):
        return cls.forward(module, x.astype(np.float32, copy=False))

    @staticmethod
    def _fp32_backward(module, cls, dout):
        return cls.backward(module, dout.astype(np.float32, copy=False))

    def remove(self):
        for module in self.layers:
            for name in ("forward", "backward", "_amp_copies"):
                module.__dict__.pop(name, None)
        self.layers = []


class GradScaler:
    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        if growth_factor <= 1.0 or not 0.0 < backoff_factor < 1.0 or growth_interval < 1 or init_scale <= 0:
            raise ValueError(f"GradScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, "
                             f"growth_interval >= 1; got {init_scale}, {growth_factor}, {backoff_factor}, "
                             f"{growth_interval}")
        self._enabled = bool(enabled)
        self._scale = float(np.float32(init_scale))     # torch keeps the scale as a float32 tensor
        self._growth_factor, self._backoff_factor = float(growth_factor), float(backoff_factor)
        self._growth_interval, self._growth_tracker = int(growth_interval), 0
        self._per_optimizer = {}                        # id(optimizer) -> {"unscaled", "found_inf"}

    def is_enabled(self):
        return self._enabled

    def get_scale(self):
        return self._scale if self._enabled else 1.0

    def get_growth_factor(self):
        return self._growth_factor

    def get_backoff_factor(self):
        return self._backoff_factor

    def get_growth_interval(self):
        return self._growth_interval

    def scale(self, outputs):
        """outputs * S (the loss gradient here), in the outputs' dtype."""
        if not self._enabled:
            return outputs
        return outputs * outputs.dtype.type(self._scale)

    def unscale_(self, optimizer):
        if not self._enabled:
            return
        state = self._per_optimizer.setdefault(id(optimizer), {"unscaled": False, "found_inf": False})
        if state["unscaled"]:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        inv_scale = np.float32(np.float64(1.0) / np.float64(self._scale))
        found = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    xp = backend.get_array_module(p.grad)
                    found.append(~xp.isfinite(p.grad).all())
                    p.grad *= p.grad.dtype.type(inv_scale)
        xp = backend.get_array_module(*[p.data for g in optimizer.param_groups for p in g["params"]])
        state["found_inf"] = bool(backend.item(xp.stack(found).any())) if found else False
        state["unscaled"] = True

    def step(self, optimizer):
        """optimizer.step() unless a gradient is inf/NaN -> its return value, or None when skipped."""
        if not self._enabled:
            return optimizer.step()
        state = self._per_optimizer.setdefault(id(optimizer), {"unscaled": False, "found_inf": False})
        if not state["unscaled"]:
            self.unscale_(optimizer)
        return None if state["found_inf"] else optimizer.step()

    def update(self, new_scale=None):
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = float(np.float32(new_scale))
        elif any(s["found_inf"] for s in self._per_optimizer.values()):
            self._scale = float(np.float32(self._scale * self._backoff_factor))
            self._growth_tracker = 0
        elif self._per_optimizer:
            successful = self._growth_tracker + 1
            if successful == self._growth_interval:
                grown = float(np.float32(self._scale * self._growth_factor))
                if math.isfinite(grown):
                    self._scale = grown
                self._growth_tracker = 0
            else:
                self._growth_tracker = successful
        self._per_optimizer = {}

    def state_dict(self):
        """torch's keys: scale, growth_factor, backoff_factor, growth_interval, _growth_tracker."""
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state):
        if not self._enabled:
            return
        if not state:
            raise RuntimeError("GradScaler.load_state_dict: the state is empty (saved from a disabled scaler)")
        self._scale = float(state["scale"])
        self._growth_factor, self._backoff_factor = float(state["growth_factor"]), float(state["backoff_factor"])
        self._growth_interval, self._growth_tracker = int(state["growth_interval"]), int(state["_growth_tracker"])
