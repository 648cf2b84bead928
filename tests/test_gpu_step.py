"""Issue 11 on the CPU: the Trainer's deferred (no host sync per step) mode,
counted with stand-ins for the device->host reads; results identical to the
per-step mode."""
import numpy as np
import pytest

from gpucnn import backend, nn, optim
from gpucnn import random as grandom
from gpucnn.trainer import array_loader, NonFiniteLossError, Trainer


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n)


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 10))


def _trainer(sync, opt="sgd", **kw):
    grandom.manual_seed(1)
    model = _cnn()
    if opt == "sgd":
        optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        optimizer = optim.Adam(model.parameters(), lr=3e-3)
    return Trainer(model, optimizer, sync=sync, **kw)


class _ReadCounter:
    """Counts the blocking device->host reads (backend.item, backend.to_cpu) and
    the non-blocking snapshots, per training step."""

    def __init__(self, monkeypatch):
        self.reads = self.snapshots = 0
        item, to_cpu, snapshot = backend.item, backend.to_cpu, backend.HostSnapshot

        def counted(fn, field):
            def wrapper(*a, **k):
                setattr(self, field, getattr(self, field) + 1)
                return fn(*a, **k)
            return wrapper
        monkeypatch.setattr(backend, "item", counted(item, "reads"))
        monkeypatch.setattr(backend, "to_cpu", counted(to_cpu, "reads"))
        monkeypatch.setattr(backend, "HostSnapshot", counted(snapshot, "snapshots"))


def test_deferred_mode_reports_the_per_step_metrics_bitwise():
    x, y = _data()
    results = {}
    for sync in ("step", "deferred"):
        trainer = _trainer(sync)
        records = trainer.fit(array_loader(x, y, batch_size=10, seed=0), array_loader(x, y, 16, shuffle=False),
                              epochs=2)
        results[sync] = ([(r["train_loss"], r["train_accuracy"], r["val_loss"], r["val_accuracy"])
                          for r in records], trainer.model.state_dict())
    assert results["step"][0] == results["deferred"][0]
    for key, value in results["step"][1].items():
        np.testing.assert_array_equal(results["deferred"][1][key], value)


def test_deferred_mode_has_no_blocking_read_per_step(monkeypatch):
    x, y = _data()
    steps = len(array_loader(x, y, batch_size=6))            # 8 batches
    bar = []
    for sync, per_step_reads in (("step", True), ("deferred", False)):
        trainer = _trainer(sync, progress_every=4)
        counter = _ReadCounter(monkeypatch)
        trainer.train_epoch(array_loader(x, y, batch_size=6, seed=0),
                            progress=lambda *a: bar.append(a) if sync == "deferred" else None)
        if per_step_reads:   # the counter sees the per-step mode's reads: loss and correct count
            assert counter.reads >= 2 * steps
        else:                # one read for the whole epoch, a snapshot every 4 steps for the bar
            assert counter.reads == 1
            assert counter.snapshots == steps // 4
        monkeypatch.undo()
    # the bar got a call per step, with the values of the latest snapshot taken in
    assert len(bar) == steps
    assert np.isnan(bar[0][2]) and np.isfinite(bar[-1][2])


def test_a_bad_label_is_raised_at_the_next_read_naming_the_batch():
    x, y = _data()
    y = y.copy()
    y[25] = 10                                                 # batch 3 of 6-sample batches (unshuffled)
    trainer = _trainer("deferred", progress_every=100)
    with pytest.raises(ValueError, match=r"batch 5 of epoch 1 has class indices outside \[0, 10\)"):
        trainer.train_epoch(array_loader(x, y, batch_size=6, shuffle=False))
    with pytest.raises(ValueError, match=r"batch 2 .* outside \[0, 10\)"):
        trainer.evaluate(array_loader(x, y, batch_size=16, shuffle=False))
    # with a progress snapshot every 2 steps it surfaces before the epoch ends
    seen = []
    trainer = _trainer("deferred", progress_every=2)
    with pytest.raises(ValueError, match="batch 5 of epoch 1"):
        trainer.train_epoch(array_loader(x, y, batch_size=6, shuffle=False), progress=lambda i, *a: seen.append(i))
    assert len(seen) < 8


def test_a_nan_loss_is_raised_at_the_next_read():
    x, y = _data()
    x = x.copy()
    x[13] = np.nan                                             # batch 3
    trainer = _trainer("deferred")
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 3"):
        trainer.train_epoch(array_loader(x, y, batch_size=6, shuffle=False))


def test_sync_mode_choice():
    trainer = _trainer("auto")
    assert not trainer.deferred()                              # the CPU reads per step
    trainer = _trainer("deferred", skip_nonfinite=True)
    with pytest.raises(ValueError, match="skip_nonfinite"):
        trainer.deferred()
    with pytest.raises(ValueError, match="sync must be one of"):
        _trainer("sometimes")


def test_deferred_mode_with_reduce_sums_and_full_batch():
    x, y = _data()
    out = {}
    for sync in ("step", "deferred"):
        trainer = _trainer(sync, full_batch=True)
        calls = []
        trainer.reduce_sums = lambda *s: calls.append(s) or s  # a one-process "all-reduce"
        out[sync] = trainer.train_epoch(array_loader(x, y, batch_size=16, shuffle=False))
        if sync == "deferred":   # one collective per epoch: the sums and the NaN flag
            assert len(calls) == 1 and len(calls[0]) == 4 and calls[0][3] == 0
        else:                    # a finiteness vote per step, then the sums
            assert len(calls) == 4 and len(calls[-1]) == 3
    for key in ("loss", "accuracy"):
        assert out["step"][key] == out["deferred"][key]


# ---- per-step scalars in device memory (gpucnn.optim.step_scalars) -------------
from gpucnn.nn.module import Parameter  # noqa: E402

_OPTIMIZERS = {
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd_nesterov_wd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3),
    "sgd_dampening": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.3),
    "sgd_plain": lambda ps: optim.SGD(ps, lr=0.05),
    "adam": lambda ps: optim.Adam(ps, lr=3e-3, weight_decay=1e-4),
    "adamw": lambda ps: optim.AdamW(ps, lr=3e-3),
}


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(shape).astype(dtype)) for shape in ((4, 3, 3, 3), (4,), (7, 5))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_capturable_updates_equal_the_eager_ones_bitwise_under_a_schedule(name, dtype):
    runs = []
    for capture in (False, True):
        params = _params(dtype)
        opt = _OPTIMIZERS[name](params)
        sched = optim.LinearWarmup(opt, 2, start_factor=0.1, after=optim.StepLR(opt, 2, gamma=0.5))
        if capture:
            scalars = optim.capturable(opt)
            assert scalars.device.dtype == dtype
        rng = np.random.default_rng(1)
        for step in range(12):
            for p in params:
                p.grad = rng.standard_normal(p.shape).astype(dtype)
            opt.step()
            if step % 3 == 2:
                sched.step()          # the rate changes between steps, as an epoch schedule does
        runs.append(([p.data.copy() for p in params], opt.state_dict()))
    (eager, eager_state), (device, device_state) = runs
    for a, b in zip(eager, device):
        np.testing.assert_array_equal(a, b)
    for i, entries in eager_state["state"].items():
        for key, value in entries.items():
            np.testing.assert_array_equal(device_state["state"][i][key], value)


def test_capturable_reads_the_rate_from_device_memory():
    """apply() alone, after a fill with another rate, uses the filled values:
    the update reads the vector, not the group's Python number."""
    params = _params(np.float32)
    opt = optim.SGD(params, lr=0.1)
    scalars = optim.capturable(opt)
    for p in params:
        p.grad = np.ones_like(p.data)
    before = params[0].data.copy()
    scalars.fill()
    opt.param_groups[0]["lr"] = 100.0      # not filled: apply must not see it
    scalars.apply()
    np.testing.assert_array_equal(params[0].data, before - np.float32(0.1))


def test_capturable_refuses_what_it_cannot_replay():
    with pytest.raises(TypeError, match="RMSprop is not supported"):
        optim.capturable(optim.RMSprop(_params(np.float32)))
    with pytest.raises(TypeError, match="amsgrad"):
        optim.capturable(optim.Adam(_params(np.float32), amsgrad=True))
    mixed = _params(np.float32) + [Parameter(np.zeros(3))]
    with pytest.raises(TypeError, match="one dtype"):
        optim.capturable(optim.SGD(mixed, lr=0.1))
    params = _params(np.float32)
    opt = optim.SGD(params, lr=0.1)
    optim.capturable(opt)
    with pytest.raises(RuntimeError, match="needs a gradient"):
        opt.step()


def test_capturable_fused_kernels_read_device_scalars_bitwise(monkeypatch):
    """The GPU branch (fused kernels, emulated on NumPy as in test_fused_emulated):
    0-d device views as kernel arguments give the eager fused results bitwise."""
    from test_fused_emulated import EmulatedElementwise
    from gpucnn import fused_gpu
    seen_scalars = []

    class Recording(EmulatedElementwise):
        def __call__(self, *args):
            seen_scalars.extend(type(a).__name__ for a in args if np.ndim(a) == 0)
            return super().__call__(*args)
    monkeypatch.setattr(fused_gpu, "elementwise_kernel", Recording)
    from gpucnn.optim import step_scalars
    monkeypatch.setitem(step_scalars._CAPTURABLE, "cpu", fused_gpu)   # the GPU branch, on NumPy
    for name in ("sgd_momentum", "sgd_nesterov_wd", "adam", "adamw"):
        runs = []
        for capture in (False, True):
            params = _params(np.float32)
            opt = _OPTIMIZERS[name](params)
            sched = optim.StepLR(opt, 2, gamma=0.5)
            if capture:
                optim.capturable(opt)
            seen_scalars.clear()
            rng = np.random.default_rng(2)
            for step in range(6):
                for p in params:
                    p.grad = rng.standard_normal(p.shape).astype(np.float32)
                opt.step()
                sched.step()
            runs.append([p.data.copy() for p in params])
            assert ("ndarray" in seen_scalars) == capture        # device views only in capturable mode
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b)
