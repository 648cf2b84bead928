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


@pytest.mark.parametrize("path", ["cpu kernels", "array code"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_capturable_updates_equal_the_eager_ones_bitwise_under_a_schedule(name, dtype, path, monkeypatch):
    if path == "array code":     # without the CPU's Numba kernels (what mixed dtypes and views take)
        from gpucnn.optim import optimizers
        monkeypatch.delitem(optimizers._FUSED, "cpu")
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
    from gpucnn.optim import optimizers
    monkeypatch.setattr(fused_gpu, "elementwise_kernel", Recording)
    monkeypatch.setitem(optimizers._FUSED, "cpu", fused_gpu)        # the GPU's kernels on NumPy arrays
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


# ---- whole-step graphs, with the CPU stand-in (gpucnn.cuda_graph) ----------------
def _fit(cuda_graph, opt, epochs=3, model=None):
    x, y = _data(50)                                  # 50 = 4 batches of 12 + one of 2 (run eagerly)
    trainer = _trainer("deferred", opt, cuda_graph=cuda_graph)
    sched = optim.StepLR(trainer.optimizer, 1, gamma=0.5)   # the rate changes every epoch
    trainer.scheduler = sched
    records = trainer.fit(array_loader(x, y, batch_size=12, seed=0), array_loader(x, y, 25, shuffle=False),
                          epochs=epochs)
    return trainer, records


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_replayed_steps_equal_eager_steps_bitwise(opt):
    eager, eager_records = _fit(False, opt)
    graph, graph_records = _fit(True, opt)
    sg = graph.step_graph
    # per epoch: 1 warm-up (first epoch only), 3 or 4 replays, 1 eager smaller batch
    assert (sg.captures, sg.eager_steps, sg.launches) == (1, 1, 3 * 4 - 1)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rs]  # noqa: E731
    assert strip(graph_records) == strip(eager_records)
    for key, value in eager.model.state_dict().items():
        np.testing.assert_array_equal(graph.model.state_dict()[key], value, err_msg=key)
    for i, entries in eager.optimizer.state_dict()["state"].items():
        for key, value in entries.items():
            np.testing.assert_array_equal(graph.optimizer.state_dict()["state"][i][key], value)


def test_graph_is_captured_again_when_its_arrays_change():
    trainer, _ = _fit(True, "sgd", epochs=1)
    state = trainer.model.state_dict()
    trainer.model.load_state_dict(state)              # new parameter arrays: the old graph would write stale ones
    x, y = _data(50)
    trainer.fit(array_loader(x, y, batch_size=12, seed=0), epochs=1)
    assert trainer.step_graph.captures == 2


class _Rebinds(nn.Module):
    """A layer whose forward rebinds a buffer (what batch norm did before it
    updated its running statistics in place)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("total", np.zeros(1, np.float32))

    def forward(self, x):
        self.total = self.total + 1
        return x

    def backward(self, dout):
        return dout


def test_a_step_that_rebinds_an_array_is_refused():
    grandom.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), _Rebinds(), nn.Linear(64, 10))
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), cuda_graph=True)
    x, y = _data(48)
    with pytest.raises(RuntimeError, match="rebinds buffer 1.total"):
        trainer.train_epoch(array_loader(x, y, batch_size=12, shuffle=False))


def test_graph_eligibility():
    trainer = _trainer("auto", cuda_graph="auto")
    x, y = _data()
    trainer.train_epoch(array_loader(x, y, batch_size=12))
    assert trainer.step_graph is None and trainer.cuda_graph_reason == "auto captures on the GPU only"
    grandom.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"dropout \(1\) draws new random numbers"):
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), cuda_graph=True).train_epoch(
            array_loader(x, y, batch_size=12))
    for kwargs, reason in (({"precision": "fp16"}, "GradScaler"), ({"full_batch": True}, "full_batch"),
                           ({"sync": "step"}, "sync='step'")):
        trainer = _trainer(kwargs.pop("sync", "auto"), cuda_graph=True, **kwargs)
        with pytest.raises(ValueError, match=reason):
            trainer.train_epoch(array_loader(x, y, batch_size=12))
    trainer = _trainer("auto", cuda_graph=True)
    trainer.reduce_sums = lambda *s: s
    with pytest.raises(ValueError, match="data-parallel"):
        trainer.train_epoch(array_loader(x, y, batch_size=12))
    with pytest.raises(ValueError, match="RMSprop has no device-memory scalars"):
        model = _cnn()
        Trainer(model, optim.RMSprop(model.parameters()), cuda_graph=True).train_epoch(
            array_loader(x, y, batch_size=12))


class _FakeCupy:
    """Just enough of CuPy for backend._CudaGraph: a memory pool, the allocator
    hook, a capturing stream and a graph, recording what happens."""

    def __init__(self):
        fake = self
        self.events, self.freed = [], []

        class Pool:
            def malloc(self, size):
                block = ("block", size, len(fake.events))
                fake.events.append(("malloc", size))
                return block

        class Graph:
            def upload(self, stream):
                fake.events.append("upload")

            def launch(self, stream=None):
                fake.events.append(("launch", stream))

        class Stream:
            ptr = 7

            def begin_capture(self):
                fake.events.append("begin")

            def end_capture(self):
                fake.events.append("end")
                return Graph()

        self.pool, self.stream = Pool(), Stream()
        self.allocator = "default allocator"

        class Cuda:
            @staticmethod
            def get_allocator():
                return fake.allocator

            @staticmethod
            def set_allocator(fn):
                fake.allocator = fn

        self.cuda = Cuda

    def get_default_memory_pool(self):
        return self.pool


def test_cuda_graph_keeps_every_block_of_the_capture_alive(monkeypatch):
    """cupy#9655: blocks allocated while capturing are held by the graph (never
    returned to the pool while it may replay), the allocator is restored, and
    the capture ends even when the step raises."""
    fake = _FakeCupy()
    monkeypatch.setattr(backend, "cupy", fake)
    monkeypatch.setattr(backend, "current_stream", lambda: fake.stream)

    def step():   # what CuPy does when the step creates arrays: ask the current allocator
        assert fake.events[-1] == "begin"
        fake.allocator(256)
        fake.allocator(1024)
    graph = backend.capture_graph(step, gpu=True)
    assert [b[1] for b in graph.kept] == [256, 1024]
    assert fake.allocator == "default allocator"
    assert fake.events == ["begin", ("malloc", 256), ("malloc", 1024), "end", "upload"]
    graph.launch()
    assert fake.events[-1] == ("launch", fake.stream)

    def failing():
        fake.allocator(8)
        raise ValueError("bad step")
    with pytest.raises(ValueError, match="bad step"):
        backend.capture_graph(failing, gpu=True)
    assert fake.events[-1] == "end" and fake.allocator == "default allocator"
    fake.stream.ptr = 0
    with pytest.raises(RuntimeError, match="non-default stream"):
        backend.capture_graph(step, gpu=True)


def test_train_command_cuda_graph_choices(tmp_path, capsys):
    from gpucnn import cli
    base = ["train", "--dataset", "digits", "--subset", "200", "--model", "lenet_bn", "--device", "cpu",
            "--epochs", "1", "--no-progress"]
    assert cli.main(base + ["--cuda-graph", "on"]) == 2
    assert "--cuda-graph on: the training step cannot be captured: it needs a GPU" in capsys.readouterr().err
    assert cli.main(base + ["--cuda-graph", "off"]) == 0
    assert cli.main(base + ["--cuda-graph", "auto", "--dropout", "0.5"]) == 0     # auto: eager here


def test_stream_scope_orders_by_events_without_waiting(monkeypatch):
    """The graph stream waits for the outer stream's earlier work and the outer
    stream for the block's work, by events (no synchronize)."""
    log = []

    class Event:
        def __init__(self, **kw):
            self.name = f"event{len([e for e in log if e[0] == 'record'])}"

        def record(self, stream):
            log.append(("record", self.name, stream.name))

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_event(self, event):
            log.append(("wait", self.name, event.name))

        def __enter__(self):
            log.append(("enter", self.name))

        def __exit__(self, *exc):
            log.append(("exit", self.name))

    class Cuda:
        pass
    Cuda.Event = Event
    fake = type("FakeCupy", (), {"cuda": Cuda})
    outer, side = Stream("outer"), Stream("graph")
    monkeypatch.setattr(backend, "cupy", fake)
    monkeypatch.setattr(backend, "current_stream", lambda: outer)
    with backend.stream_scope(side):
        log.append(("work",))
    assert log == [("record", "event0", "outer"), ("wait", "graph", "event0"), ("enter", "graph"), ("work",),
                   ("exit", "graph"), ("record", "event1", "graph"), ("wait", "outer", "event1")]
    with backend.stream_scope(None):                 # the CPU: nothing
        pass


# ---- on a GPU (pytest -m gpu, part of make gpu-check): not yet run -------------------
@pytest.mark.gpu
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_gpu_graph_replays_equal_eager_steps_bitwise(opt):
    """The real capture path: CuPy stream capture, replays, static buffers,
    device scalars; the same kernels eagerly give the same bits."""
    x, y = _data(50)
    out = []
    for graph in (False, True):
        trainer = _trainer("deferred", opt, device="gpu", cuda_graph=graph)
        trainer.scheduler = optim.StepLR(trainer.optimizer, 1, gamma=0.5)
        records = trainer.fit(array_loader(x, y, batch_size=12, seed=0), epochs=3)
        out.append(({k: backend.to_cpu(v) for k, v in trainer.model.state_dict().items()},
                    [(r["train_loss"], r["train_accuracy"]) for r in records], trainer))
    (eager, eager_records, _), (graphed, graph_records, trainer) = out
    assert trainer.step_graph.launches == 11 and not trainer.step_graph.graph.is_stand_in
    assert graph_records == eager_records
    for key, value in eager.items():
        np.testing.assert_array_equal(graphed[key], value, err_msg=key)


@pytest.mark.gpu
def test_gpu_graph_survives_memory_pool_reuse():
    """cupy#9655: after the capture, new arrays take whatever the pool has free
    and are filled with NaN between replays; the replays stay equal to eager."""
    import cupy
    x, y = _data(50)
    out = []
    for graph in (False, True):
        trainer = _trainer("deferred", "sgd", device="gpu", cuda_graph=graph)
        for _ in range(2):
            trainer.train_epoch(array_loader(x, y, batch_size=12, shuffle=False))
            junk = [cupy.full(n, np.nan, np.float32) for n in (12 * 4 * 64, 12 * 10, 4 * 9, 64 * 10) * 16]
            del junk
        out.append({k: backend.to_cpu(v) for k, v in trainer.model.state_dict().items()})
    for key, value in out[0].items():
        np.testing.assert_array_equal(out[1][key], value, err_msg=key)


@pytest.mark.gpu
def test_gpu_deferred_epoch_reads_once(monkeypatch):
    x, y = _data(48)
    trainer = _trainer("deferred", device="gpu", cuda_graph=True)
    trainer.train_epoch(array_loader(x, y, batch_size=12))
    counter = _ReadCounter(monkeypatch)
    trainer.train_epoch(array_loader(x, y, batch_size=12))
    assert counter.reads == 1
