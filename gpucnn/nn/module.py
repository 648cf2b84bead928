"""Parameter, Module and the containers Sequential and Residual.

Layer-wise backprop as the course teaches it: `forward(x)` computes the
output and, in training mode, caches what the layer's `backward` needs;
`backward(dout)` returns dL/dx and adds dL/dparameter into each parameter's
`.grad`. A cache serves exactly one backward, which frees it. In eval mode,
or inside `with no_grad():`, forward caches nothing (and backward then
raises).

Registration follows PyTorch: assigning a Parameter or a Module to an
attribute registers it under that name, in assignment order; buffers (state
that is not trained, such as BatchNorm's running statistics) are registered
with `register_buffer`. `state_dict()` keys are the dotted attribute paths
('0.weight', 'conv1.bias', 'bn.running_mean').
"""
import contextlib

import numpy as np

from .. import backend

_grad_enabled = True
_forward_hooks = []  # callables (module, x, y) seen by every __call__; see summary.py


@contextlib.contextmanager
def no_grad():
    """Within this block no layer caches anything for backward (like
    torch.no_grad); training-mode behaviour (dropout, batch statistics)
    is unchanged."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


@contextlib.contextmanager
def forward_hook(hook):
    """Call `hook(module, x, y)` after every module's forward inside the block."""
    _forward_hooks.append(hook)
    try:
        yield
    finally:
        _forward_hooks.remove(hook)


def _move(a, to_gpu):
    return backend.to_gpu(a) if to_gpu else backend.to_cpu(a)


class Parameter:
    """A trainable array: `.data`, and `.grad` (None until a backward adds
    to it; it accumulates until `zero_grad()`)."""

    def __init__(self, data):
        if not (isinstance(data, np.ndarray) or backend.is_gpu_array(data)):
            data = np.asarray(data, dtype=np.float32)
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return int(self.data.size)

    def accumulate(self, g):
        """Add `g` into `.grad`. The first call keeps `g` itself, so layers pass
        freshly computed arrays only."""
        if self.grad is None:
            self.grad = g.astype(self.data.dtype, copy=False)
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of every layer and container (see the module docstring)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)

    # ---- registration -------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before "
                                 f"assigning attribute {name!r}")
        for registry in (self._parameters, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, value):
        """Register non-trained state (an array) saved in state_dict."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    # ---- traversal ----------------------------------------------------
    def named_modules(self, prefix="", _seen=None):
        """(dotted name, module) for this module and all below, depth first;
        a module reachable twice (shared) is listed once, under its first name."""
        _seen = set() if _seen is None else _seen
        if id(self) in _seen:
            return
        _seen.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, _seen)

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) in registration order; a Parameter shared
        by two layers is listed once."""
        seen = set()
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mod_name, module in self.named_modules(prefix):
            for name, b in module._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def _set_buffer(self, dotted, value):
        *path, name = dotted.split(".")
        module = self
        for part in path:
            module = module._modules[part]
        module.register_buffer(name, value)

    # ---- forward / backward ---------------------------------------------
    def __call__(self, x):
        x = backend.dlpack_or_same(x)  # PyTorch/JAX arrays: zero-copy NumPy/CuPy views
        y = self.forward(x)
        for hook in _forward_hooks:
            hook(self, x, y)
        return y

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def backward_params(self, dout):
        """backward where the input's gradient is not needed (the model's first
        layer): accumulates the parameters' gradients and returns None. Layers
        that can skip their input gradient (convolutions, Sequential for its
        first layer) override _backward_params; by default, and whenever this
        instance's backward was replaced (gpucnn.amp's policies, DDP's hooks,
        the profiler's timers wrap it), it is backward."""
        if "backward" in self.__dict__:
            self.backward(dout)
        else:
            self._backward_params(dout)

    def _backward_params(self, dout):
        self.backward(dout)

    def _caching(self):
        """True when forward must keep what backward needs."""
        return self.training and _grad_enabled

    def _save(self, *values):
        self._cache = values if self._caching() else None

    def _take(self):
        """The cache of the last training forward; one backward consumes it."""
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no forward cache (backward needs a "
                               f"forward in training mode outside no_grad(), and each forward "
                               f"serves one backward)")
        self._cache = None
        return cache

    # ---- modes and gradients -----------------------------------------
    def train(self, mode=True):
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
            if not mode:
                object.__setattr__(module, "_cache", None)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ---- devices and dtypes --------------------------------------------
    def _apply(self, fn_param, fn_buffer):
        for _, module in self.named_modules():
            for p in module._parameters.values():
                p.data = fn_param(p.data)
                p.grad = None if p.grad is None else fn_param(p.grad)
            for name, b in list(module._buffers.items()):
                module.register_buffer(name, fn_buffer(b))
            object.__setattr__(module, "_cache", None)
        return self

    def to_gpu(self):
        """Move parameters and floating-point buffers to the GPU (integer
        counters such as num_batches_tracked stay on the host)."""
        return self._apply(lambda a: _move(a, True),
                           lambda b: _move(b, True) if _is_float(b) else b)

    def to_cpu(self):
        return self._apply(lambda a: _move(a, False), lambda b: _move(b, False))

    def astype(self, dtype):
        """Cast parameters and floating-point buffers (float32 or float64)."""
        return self._apply(lambda a: a.astype(dtype),
                           lambda b: b.astype(dtype) if _is_float(b) else b)

    def double(self):
        return self.astype(np.float64)

    def float(self):
        return self.astype(np.float32)

    # ---- state ------------------------------------------------------------
    def state_dict(self):
        """{dotted name: array} for every parameter and buffer. The arrays
        are copies (on the module's device), so a saved state does not
        change when training continues."""
        params = {id(p): name for name, p in self.named_parameters()}  # shared ones once
        state = {}
        for mod_name, module in self.named_modules():  # PyTorch's order: per module,
            prefix = f"{mod_name}." if mod_name else ""  # parameters then buffers
            for name, p in module._parameters.items():
                if params.get(id(p)) == prefix + name:
                    state[prefix + name] = p.data.copy()
            for name, b in module._buffers.items():
                state[prefix + name] = b.copy()
        return state

    def load_state_dict(self, state, strict=True):
        """Copy `state` into the parameters and buffers, casting to each one's
        dtype and device. Every bad key is collected and reported in one
        error: missing and unexpected keys (only when strict), values with the
        wrong shape, and mis-typed values (not an array of numbers, or a float
        given for an integer buffer). Returns (missing_keys, unexpected_keys)."""
        targets = dict(self.named_parameters())
        targets.update(self.named_buffers())
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        problems = []
        if strict:
            problems += [f"missing key {k!r}" for k in missing]
            problems += [f"unexpected key {k!r}" for k in unexpected]
        converted = {}
        for key, target in targets.items():
            if key not in state:
                continue
            current = target.data if isinstance(target, Parameter) else target
            value = backend.to_cpu(state[key]) if backend.is_gpu_array(state[key]) else state[key]
            value = np.asarray(value) if not isinstance(value, np.ndarray) else value
            want = np.dtype(current.dtype)
            if value.dtype.kind not in ("f", "i", "u") or (want.kind == "f") != (value.dtype.kind == "f"):
                problems.append(f"mis-typed key {key!r}: expected {want} values, got {value.dtype}")
            elif tuple(value.shape) != tuple(current.shape):
                problems.append(f"mis-shaped key {key!r}: expected shape {tuple(current.shape)}, "
                                f"got {tuple(value.shape)}")
            else:
                converted[key] = _move(value.astype(want), backend.is_gpu_array(current))
        if problems:
            raise ValueError(f"load_state_dict({type(self).__name__}): {len(problems)} bad key(s):\n  "
                             + "\n  ".join(problems))
        buffers = dict(self.named_buffers())
        for key, value in converted.items():
            if key in buffers:
                self._set_buffer(key, value)
            else:
                targets[key].data = value
        return missing, unexpected

    # ---- display ------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _is_float(a):
    return np.dtype(a.dtype).kind == "f"


class Sequential(Module):
    """Layers applied in order; registered as '0', '1', ... like PyTorch."""

    def __init__(self, *layers):
        super().__init__()
        for layer in layers:
            self.append(layer)

    def append(self, layer):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential: expected a Module, got {type(layer).__name__}")
        setattr(self, str(len(self._modules)), layer)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, dout):
        for layer in reversed(list(self._modules.values())):
            dout = layer.backward(dout)
        return dout

    def _backward_params(self, dout):
        layers = list(self._modules.values())
        for layer in reversed(layers[1:]):
            dout = layer.backward(dout)
        if layers:
            layers[0].backward_params(dout)


class Residual(Module):
    """y = body(x) + shortcut(x), where the shortcut is `projection` (for
    instance a 1x1 Conv2d with a stride, when the body changes the shape) or
    the identity. Backward: dx = body.backward(dy) + shortcut.backward(dy)."""

    def __init__(self, body, projection=None):
        super().__init__()
        self.body = body
        if projection is not None:
            self.projection = projection
        self._has_projection = projection is not None

    def forward(self, x):
        y = self.body(x)
        shortcut = self.projection(x) if self._has_projection else x
        if tuple(y.shape) != tuple(shortcut.shape):
            raise ValueError(f"Residual: body output {tuple(y.shape)} and shortcut "
                             f"{tuple(shortcut.shape)} differ; give a projection")
        return y + shortcut

    def backward(self, dout):
        dx = self.body.backward(dout)
        return dx + (self.projection.backward(dout) if self._has_projection else dout)
