"""The fused GPU formulas (gpucnn.fused_gpu) checked without a GPU.

A small stand-in for cupy.ElementwiseKernel runs each kernel's C body with
NumPy: statements in order, inputs broadcast, outputs read and written in
place, the ternary as np.where. With it (and the per-device tables pointing
"cpu" at the GPU implementations), batch norm and the optimizers take their
fused branches on the CPU,
and every result is compared with their plain array code. This checks the
formulas and the branches' bookkeeping (running statistics, momentum
buffers, step counts); the real kernels are checked on a GPU by the gpu tests.
"""
import re

import numpy as np
import pytest

from gpucnn import fused_gpu, nn, optim
from gpucnn.nn import Parameter, norm
from gpucnn.optim import optimizers

_TERNARY = re.compile(r"(\w+)\s*\?\s*([^:]+?)\s*:\s*([^()]+)")


def _translate(body):
    """C statements -> Python assignments (one per statement)."""
    body = re.sub(r"//[^\n]*", "", body)
    out = []
    for stmt in filter(None, (s.strip() for s in body.split(";"))):
        stmt = re.sub(r"^T\s+", "", stmt)                      # a local declaration
        stmt = re.sub(r"\bsqrt\(", "np.sqrt(", stmt)
        stmt = _TERNARY.sub(lambda m: f"np.where({m[1]}, {m[2]}, {m[3].strip()})", stmt)
        assert "?" not in stmt and ":" not in stmt, stmt
        out.append(stmt)
    return out


class EmulatedElementwise:
    def __init__(self, name, in_params, out_params, body):  # kernel_loader.elementwise_kernel's order
        split = lambda params: [p.split() for p in params.split(",")]   # noqa: E731
        self.ins, self.outs, self.name = split(in_params), split(out_params), name
        self.statements = _translate(body)

    def __call__(self, *args):
        ins, given = args[:len(self.ins)], args[len(self.ins):]
        env = {name: a for (_, name), a in zip(self.ins, ins)}
        t = next(np.dtype(a.dtype) for (typ, _), a in zip(self.ins, ins) if typ == "T")
        assert all(np.dtype(a.dtype) == t for (typ, _), a in zip(self.ins, ins) if typ == "T"), self.name
        shape = np.broadcast_shapes(*(np.shape(a) for a in ins))
        outs = list(given) + [np.empty(shape, t) for _ in self.outs[len(given):]]
        env.update({name: o for (_, name), o in zip(self.outs, outs)})
        for stmt in self.statements:
            target, expr = (s.strip() for s in stmt.split("=", 1))
            env[target] = eval(expr, {"np": np}, env)              # noqa: S307 (our own kernel text)
        for (_, name), o in zip(self.outs, outs):
            o[...] = env[name]
            assert o.dtype == t, (self.name, name, o.dtype)
        return outs[0] if len(outs) == 1 else tuple(outs)


def _count_calls(monkeypatch, *names):
    """Wrap fused_gpu functions to count their calls; returns the live counts."""
    calls = {}
    for name in names:
        real = getattr(fused_gpu, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(fused_gpu, name, counted)
    return calls


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """Make the fused branches run on NumPy arrays through the emulator."""
    def enable():
        monkeypatch.setattr(fused_gpu, "elementwise_kernel", EmulatedElementwise)
        monkeypatch.setitem(optimizers._FUSED, "cpu", fused_gpu)        # the per-device tables
        monkeypatch.setitem(norm._IMPLEMENTATIONS, "cpu", norm._GpuFused())
    return enable


@pytest.fixture
def array_code_on_cpu(monkeypatch):
    """The plain array code on NumPy arrays (not the CPU's Numba kernels)."""
    monkeypatch.delitem(optimizers._FUSED, "cpu")
    monkeypatch.setitem(norm._IMPLEMENTATIONS, "cpu", norm._ARRAY_CODE)


def test_every_kernel_body_translates():
    for spec in (fused_gpu._ADAM, fused_gpu._SGD_MOMENTUM, fused_gpu._SQUARED_DEVIATION, fused_gpu._BN_STATS,
                 fused_gpu._BN_NORMALIZE, fused_gpu._BN_EVAL, fused_gpu._BN_BACKWARD,
                 fused_gpu._BN_NORMALIZE_RELU, fused_gpu._BN_EVAL_RELU, fused_gpu._RELU_GRAD_PRODUCT):
        assert _translate(spec[2])


def _trajectory(name, cfg, dtype, steps=40):
    rng = np.random.default_rng(7)
    params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in ((3, 4), (5,))]
    opt = getattr(optim, name)(params, **cfg)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        for k, p in enumerate(params):
            p.grad = (2 * (1 + k) * (p.data - 0.3) + np.cos(3 * p.data)).astype(dtype)
        opt.step()
        out.append([p.data.copy() for p in params])
    return out


FUSED_OPTIMIZERS = [
    ("SGD", {"lr": 0.02, "momentum": 0.9}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name,cfg", FUSED_OPTIMIZERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FUSED_OPTIMIZERS)])
def test_fused_optimizer_matches_array_code(array_code_on_cpu, fused_on_cpu, monkeypatch, name, cfg, dtype, rtol):
    plain = _trajectory(name, cfg, dtype)
    fused_on_cpu()
    calls = _count_calls(monkeypatch, "adam_step" if name.startswith("Adam") else "sgd_momentum_step")
    fused = _trajectory(name, cfg, dtype)
    assert calls == {"adam_step" if name.startswith("Adam") else "sgd_momentum_step": 40 * 2}  # every update fused
    for step, (a, b) in enumerate(zip(fused, plain)):
        for x, y in zip(a, b):
            assert x.dtype == dtype
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * 1e-2, err_msg=f"step {step + 1}")


def _batch_norm_run(momentum, dtype):
    """Three training batches (outputs, input gradients), then eval; the layer's state."""
    rng = np.random.default_rng(3)
    layer = nn.BatchNorm2d(4, momentum=momentum).astype(dtype)
    layer.weight.data[:] = rng.uniform(0.5, 1.5, 4)
    layer.bias.data[:] = rng.standard_normal(4)
    results = []
    for _ in range(3):
        x = (rng.standard_normal((5, 4, 3, 2)) * 2 + 1).astype(dtype)
        results.append(layer(x))
        results.append(layer.backward(rng.standard_normal(x.shape).astype(dtype)))
    results += [layer.weight.grad, layer.bias.grad]
    layer.eval()
    results.append(layer(rng.standard_normal((2, 4, 3, 3)).astype(dtype)))
    return results, layer.state_dict()


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["float64", "float32"])
def test_fused_batch_norm_matches_array_code(array_code_on_cpu, fused_on_cpu, monkeypatch, momentum, dtype, rtol):
    plain, plain_state = _batch_norm_run(momentum, dtype)
    fused_on_cpu()
    calls = _count_calls(monkeypatch, "batch_norm_stats", "batch_norm_backward", "batch_norm_eval")
    fused, fused_state = _batch_norm_run(momentum, dtype)
    assert calls == {"batch_norm_stats": 3, "batch_norm_backward": 3, "batch_norm_eval": 1}
    for i, (a, b) in enumerate(zip(fused, plain)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=f"result {i}")
    assert fused_state.keys() == plain_state.keys()
    for key in plain_state:
        np.testing.assert_allclose(fused_state[key], plain_state[key], rtol=rtol, atol=rtol, err_msg=key)
    assert int(fused_state["num_batches_tracked"]) == 3


def _batch_norm_relu_run(dtype, fuse):
    """BatchNorm2d + ReLU (fused or not): two training batches, then eval."""
    rng = np.random.default_rng(4)
    pair = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()).astype(dtype)
    pair[0].weight.data[:] = rng.uniform(0.5, 1.5, 4)
    pair[0].bias.data[:] = rng.standard_normal(4)
    if fuse:
        nn.fuse(pair)
    results = []
    for _ in range(2):
        x = (rng.standard_normal((5, 4, 3, 2)) * 2 + 1).astype(dtype)
        results += [pair(x), pair.backward(rng.standard_normal(x.shape).astype(dtype))]
    results += [pair[0].weight.grad, pair[0].bias.grad]
    pair.eval()
    results.append(pair(rng.standard_normal((2, 4, 3, 3)).astype(dtype)))
    return results


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["float64", "float32"])
def test_fused_batch_norm_relu_matches_array_code(array_code_on_cpu, fused_on_cpu, monkeypatch, dtype, rtol):
    """The GPU branch of a BatchNorm2d with a fused ReLU (issue 11) against the
    unfused layers' array code."""
    plain = _batch_norm_relu_run(dtype, fuse=False)
    fused_on_cpu()
    calls = _count_calls(monkeypatch, "batch_norm_normalize_relu", "relu_grad_product", "batch_norm_eval_relu",
                         "batch_norm_normalize")
    fused = _batch_norm_relu_run(dtype, fuse=True)
    assert calls == {"batch_norm_normalize_relu": 2, "relu_grad_product": 2, "batch_norm_eval_relu": 1}
    for i, (a, b) in enumerate(zip(fused, plain)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=f"result {i}")
    assert np.sum(fused[0] == 0) > 0 and np.sum(fused[0] > 0) > 0   # the ReLU cut some values
