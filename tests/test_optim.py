"""Optimizers and schedules: trajectories over many steps against the update
formulas written out independently here, against torch.optim (when PyTorch
imports) for every variant, the course's momentum/Nesterov forms, and
state_dict round trips."""
import copy
import math

import numpy as np
import pytest

from gpucnn import optim
from gpucnn.nn import Parameter

STEPS = 60


def _grad(p, k):
    """Gradient of f(p) = sum(a (p - c)^2 + 0.3 sin(3 p)) for parameter k."""
    a = 1.0 + 0.5 * k
    return 2 * a * (p - (0.7 - k)) + 0.9 * np.cos(3 * p)


def _initial():
    rng = np.random.default_rng(42)
    return [rng.standard_normal((3, 4)), rng.standard_normal(5)]


def _run_ours(name, cfg, steps=STEPS):
    params = [Parameter(a.copy()) for a in _initial()]
    opt = getattr(optim, name)(params, **cfg)
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        for k, p in enumerate(params):
            p.grad = _grad(p.data, k)
        opt.step()
        trajectory.append([p.data.copy() for p in params])
    return trajectory


# ---- the formulas, written out independently (one parameter at a time) -----

def _reference(name, cfg, steps=STEPS):
    trajectory = []
    xs = _initial()
    states = [{} for _ in xs]
    for t in range(1, steps + 1):
        new = []
        for k, (x, s) in enumerate(zip(xs, states)):
            g = _grad(x, k)
            new.append(REFERENCE[name](x.copy(), g, s, t, **cfg))
        xs = new
        trajectory.append([x.copy() for x in xs])
    return trajectory


def _ref_sgd(x, g, s, t, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    g = g + weight_decay * x
    if momentum:
        s["b"] = g.copy() if t == 1 else momentum * s["b"] + (1 - dampening) * g
        g = g + momentum * s["b"] if nesterov else s["b"]
    return x - lr * g


def _ref_adagrad(x, g, s, t, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
    g = g + weight_decay * x
    s["G"] = s.get("G", np.full_like(x, initial_accumulator_value)) + g ** 2
    return x - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s["G"]) + eps)


def _ref_rmsprop(x, g, s, t, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    g = g + weight_decay * x
    s["v"] = alpha * s.get("v", 0.0) + (1 - alpha) * g ** 2
    variance = s["v"]
    if centered:
        s["m"] = alpha * s.get("m", 0.0) + (1 - alpha) * g
        variance = s["v"] - s["m"] ** 2
    step = g / (np.sqrt(variance) + eps)
    if momentum:
        s["b"] = momentum * s.get("b", 0.0) + step
        step = s["b"]
    return x - lr * step


def _ref_adadelta(x, g, s, t, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    g = g + weight_decay * x
    s["Eg2"] = rho * s.get("Eg2", 0.0) + (1 - rho) * g ** 2
    dx = np.sqrt(s.get("Edx2", 0.0) + eps) / np.sqrt(s["Eg2"] + eps) * g
    s["Edx2"] = rho * s.get("Edx2", 0.0) + (1 - rho) * dx ** 2
    return x - lr * dx


def _ref_adam(x, g, s, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
              decoupled=False):
    b1, b2 = betas
    if decoupled:
        x = x - lr * weight_decay * x
    else:
        g = g + weight_decay * x
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    v = s["v"]
    if amsgrad:
        s["vmax"] = np.maximum(s.get("vmax", 0.0), s["v"])
        v = s["vmax"]
    m_hat = s["m"] / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    return x - lr * m_hat / (np.sqrt(v_hat) + eps)


def _ref_adamw(x, g, s, t, weight_decay=1e-2, **cfg):
    return _ref_adam(x, g, s, t, weight_decay=weight_decay, decoupled=True, **cfg)


REFERENCE = {"SGD": _ref_sgd, "Adagrad": _ref_adagrad, "RMSprop": _ref_rmsprop, "Adadelta": _ref_adadelta,
             "Adam": _ref_adam, "AdamW": _ref_adamw}

CASES = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.02, "momentum": 0.9}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.5}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.95, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in cfg.items()) or 'defaults'}" for name, cfg in CASES]


@pytest.mark.parametrize("name,cfg", CASES, ids=IDS)
def test_trajectory_matches_written_out_formula(name, cfg):
    ours, reference = _run_ours(name, cfg), _reference(name, cfg)
    moved = max(np.abs(ours[-1][k] - _initial()[k]).max() for k in range(2))
    assert moved > 1e-3  # the run goes somewhere
    for step, (a, b) in enumerate(zip(ours, reference)):
        for k in range(2):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=f"step {step + 1}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-9, 1e-12), (np.float32, 1e-4, 1e-5)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("name,cfg", CASES, ids=IDS)
def test_gpu_trajectory_matches_written_out_formula(name, cfg, dtype, rtol, atol):
    # On the GPU, SGD with momentum and Adam/AdamW without amsgrad take the
    # fused path (gpucnn.fused_gpu); the others the array code on CuPy.
    from gpucnn import backend
    params = [Parameter(backend.to_gpu(a.astype(dtype))) for a in _initial()]
    opt = getattr(optim, name)(params, **cfg)
    reference = _reference(name, cfg)
    for step in range(STEPS):
        opt.zero_grad()
        for k, p in enumerate(params):
            p.grad = _grad(p.data, k)
        opt.step()
        for k, p in enumerate(params):
            assert backend.is_gpu_array(p.data) and p.data.dtype == dtype
            np.testing.assert_allclose(backend.to_cpu(p.data), reference[step][k], rtol=rtol, atol=atol,
                                       err_msg=f"step {step + 1}")


@pytest.mark.parametrize("name,cfg", CASES, ids=IDS)
def test_trajectory_matches_torch_optim(name, cfg):
    torch = pytest.importorskip("torch")
    params = [torch.tensor(a, requires_grad=True) for a in _initial()]
    opt = getattr(torch.optim, name)(params, **cfg)
    ours = _run_ours(name, cfg)
    for step in range(STEPS):
        opt.zero_grad()
        for k, p in enumerate(params):
            p.grad = torch.tensor(_grad(p.detach().numpy(), k))
        opt.step()
        for k, p in enumerate(params):
            np.testing.assert_allclose(ours[step][k], p.detach().numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=f"step {step + 1}")


def test_defaults_are_torchs():
    torch = pytest.importorskip("torch")
    for name in ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW"):
        ours = getattr(optim, name).defaults
        theirs = getattr(torch.optim, name)([torch.zeros(1, requires_grad=True)]).defaults
        for key, value in ours.items():
            assert theirs[key] == value, f"{name}.{key}: {value} vs torch {theirs[key]}"


def test_course_momentum_and_nesterov_forms_map_onto_sgd():
    """Course: v = rho v - alpha grad; x += v  (momentum), and
    v = rho v - alpha grad f(x + rho v); x += v (Nesterov). The torch-form
    parameters are x (momentum) and the look-ahead x + rho v (Nesterov)."""
    rho, alpha = 0.9, 0.02
    for nesterov in (False, True):
        ours = _run_ours("SGD", {"lr": alpha, "momentum": rho, "nesterov": nesterov})
        xs, vs = _initial(), [0.0, 0.0]
        for step in range(STEPS):
            for k in range(2):
                look = xs[k] + rho * vs[k] if nesterov else xs[k]
                vs[k] = rho * vs[k] - alpha * _grad(look, k)
                xs[k] = xs[k] + vs[k]
                held = xs[k] + rho * vs[k] if nesterov else xs[k]
                np.testing.assert_allclose(ours[step][k], held, rtol=1e-9, atol=1e-12)


def test_parameter_groups_and_skipped_parameters():
    a, b, c = (Parameter(np.ones(2)) for _ in range(3))
    opt = optim.SGD([{"params": [a]}, {"params": [b, c], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = np.ones(2), np.ones(2)  # c has no gradient: untouched
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.5)
    np.testing.assert_allclose(c.data, 1.0)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_invalid_hyperparameters_are_refused():
    p = [Parameter(np.ones(2))]
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.Adam(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        optim.SGD(p, lr=0.1, betas=(0.9, 0.9))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)


@pytest.mark.parametrize("name,cfg", [c for c in CASES if c[1]], ids=[i for c, i in zip(CASES, IDS) if c[1]])
def test_state_dict_round_trip_continues_identically(name, cfg):
    params = [Parameter(a.copy()) for a in _initial()]
    opt = getattr(optim, name)(params, **cfg)

    def run(opt, params, steps):
        for _ in range(steps):
            for k, p in enumerate(params):
                p.grad = _grad(p.data, k)
            opt.step()

    run(opt, params, 10)
    clone = [Parameter(p.data.copy()) for p in params]
    restored = getattr(optim, name)(clone, lr=123.0)  # hyperparameters come back from the state
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    run(opt, params, 15)
    run(restored, clone, 15)
    for p, q in zip(params, clone):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_rejects_other_parameter_layout():
    opt = optim.Adam([Parameter(np.ones(2)), Parameter(np.ones(3))])
    other = optim.Adam([Parameter(np.ones(2))])
    with pytest.raises(ValueError, match="do not match"):
        other.load_state_dict(opt.state_dict())


# ---- schedules -----------------------------------------------------------------

SCHEDULES = [
    ("StepLR", {"step_size": 3, "gamma": 0.5}),
    ("CosineAnnealingLR", {"T_max": 10, "eta_min": 0.001}),
    ("LinearLR", {"start_factor": 0.25, "total_iters": 4}),
    ("LinearLR", {}),
]


def _closed_form(name, cfg, base, e):
    if name == "StepLR":
        return base * cfg["gamma"] ** (e // cfg["step_size"])
    if name == "CosineAnnealingLR":
        return cfg["eta_min"] + (base - cfg["eta_min"]) * (1 + math.cos(math.pi * e / cfg["T_max"])) / 2
    start, total = cfg.get("start_factor", 1 / 3), cfg.get("total_iters", 5)
    return base * (start + (1 - start) * min(e, total) / total)


@pytest.mark.parametrize("name,cfg", SCHEDULES)
def test_schedules_follow_their_formula(name, cfg):
    opt = optim.SGD([{"params": [Parameter(np.ones(1))], "lr": 0.1},
                     {"params": [Parameter(np.ones(1))], "lr": 0.3}])
    sched = getattr(optim, name)(opt, **cfg)
    for e in range(25):
        assert sched.get_last_lr() == pytest.approx([_closed_form(name, cfg, 0.1, e),
                                                     _closed_form(name, cfg, 0.3, e)], rel=1e-12)
        sched.step()


@pytest.mark.parametrize("name,cfg", SCHEDULES)
def test_schedules_match_torch(name, cfg):
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    theirs_opt = torch.optim.SGD([p], lr=0.1)
    theirs = getattr(torch.optim.lr_scheduler, name)(theirs_opt, **cfg)
    ours_opt = optim.SGD([Parameter(np.ones(1))], lr=0.1)
    ours = getattr(optim, name)(ours_opt, **cfg)
    for e in range(30):
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], rel=1e-9, abs=1e-15), f"epoch {e}"
        theirs_opt.step()
        theirs.step()
        ours.step()


def test_linear_warmup_then_cosine():
    opt = optim.SGD([Parameter(np.ones(1))], lr=0.2)
    cosine = optim.CosineAnnealingLR(opt, T_max=8)
    sched = optim.LinearWarmup(opt, warmup_epochs=4, start_factor=0.1, after=cosine)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        sched.step()
    expected = [0.2 * (0.1 + 0.9 * e / 4) for e in range(4)]
    expected += [0.2 * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(8)]
    assert seen == pytest.approx(expected, rel=1e-12)


def test_scheduler_state_dict_resumes():
    opt = optim.SGD([Parameter(np.ones(1))], lr=0.1)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(5):
        sched.step()
    opt2 = optim.SGD([Parameter(np.ones(1))], lr=0.1)
    sched2 = optim.StepLR(opt2, step_size=2, gamma=0.5)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)


CPU_FUSED = [("SGD", {"lr": 0.02, "momentum": 0.9}),
             ("SGD", {"lr": 0.02, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
             ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
             ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}),
             ("AdamW", {"lr": 0.01, "weight_decay": 0.1})]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name,cfg", CPU_FUSED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CPU_FUSED)])
def test_cpu_fused_updates_match_array_code(monkeypatch, name, cfg, dtype, rtol):
    # The CPU's fused Numba updates (optim_cpu) against the array code, and
    # every update of a contiguous NumPy parameter takes the fused kernel.
    from gpucnn.optim import optim_cpu, optimizers

    def run():
        params = [Parameter(a.astype(dtype)) for a in _initial()]
        opt = getattr(optim, name)(params, **cfg)
        out = []
        for _ in range(30):
            opt.zero_grad()
            for k, p in enumerate(params):
                p.grad = _grad(p.data, k).astype(dtype)
            opt.step()
            out.append([p.data.copy() for p in params])
        return out
    calls = []
    fn = "adam_step" if name.startswith("Adam") else "sgd_momentum_step"
    real = getattr(optim_cpu, fn)
    monkeypatch.setattr(optim_cpu, fn, lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = run()
    assert len(calls) == 30 * 2
    monkeypatch.delitem(optimizers._FUSED, "cpu")
    plain = run()
    for step, (a, b) in enumerate(zip(fused, plain)):
        for x, y in zip(a, b):
            assert x.dtype == dtype
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * 1e-2, err_msg=f"step {step + 1}")


def test_cpu_fused_update_is_thread_count_independent():
    # A parameter large enough to be split across threads gives the same bits at 1 and 2 threads.
    import numba
    rng = np.random.default_rng(0)
    p0, g = rng.standard_normal(600_000).astype(np.float32), rng.standard_normal(600_000).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            p = Parameter(p0.copy())
            opt = optim.Adam([p], lr=0.01, weight_decay=0.1)
            for _ in range(3):
                p.grad = g
                opt.step()
            results.append(p.data)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])
