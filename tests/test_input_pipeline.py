"""The overlapped input pipeline (gpucnn.input_pipeline) and its wiring into the Trainer and `gpucnn train`.

On the CPU the pipeline runs with backend.StandInTransfers (content, order,
errors) and with a recording fake (the order of its stream/event operations,
checked by `check_ordering` as happens-before rules: a pinned buffer is
refilled only after its copy finished, a device buffer is overwritten only
after the step that read it, a batch is used only after its copy). Marked gpu:
the same on CuPy (not yet run on a GPU).
"""
import numpy as np
import pytest

from gpucnn import backend, nn, optim
from gpucnn import random as grandom
from gpucnn.data import DataLoader, build_augmentation
from gpucnn.input_pipeline import DeviceBatches, InputPipelineError
from gpucnn.trainer import Trainer


# ---- a recording fake of backend.CudaTransfers ------------------------------------------------
class _Stream:
    def __init__(self, fake, name):
        self.fake, self.name = fake, name

    def wait_event(self, event):
        if ("wait", self.name) not in self.fake.drop:
            self.fake.log.append(("wait", self.name, event.name))


class _Event:
    def __init__(self, fake, name):
        self.fake, self.name, self._done = fake, name, True

    def record(self, stream):
        self.fake.log.append(("record", self.name, stream.name))
        self._done = self.fake.done_at_once

    @property
    def done(self):
        if self._done:
            self.fake.log.append(("synced", self.name))     # a query that says finished counts as a wait
        return self._done

    def synchronize(self):
        if "sync" not in self.fake.drop:
            self.fake.log.append(("synced", self.name))
            self._done = True


def _base(a):
    while a.base is not None:
        a = a.base
    return id(a)


class FakeTransfers:
    """Logs ("fill", host), ("copy", stream, device, host), ("record", event, stream),
    ("wait", stream, event), ("synced", event), ("alloc", device); copies at once.
    done_at_once=False: an event is done only once synchronized (the host always
    waits); drop: operations to leave out, to show check_ordering catches them."""
    gpu = False

    def __init__(self, done_at_once=False, drop=()):
        self.log, self.done_at_once, self.drop = [], done_at_once, set(drop)
        self.compute, self.n_events, self.n_streams = _Stream(self, "compute"), 0, 0

    def new_stream(self):
        self.n_streams += 1
        return _Stream(self, f"copy{self.n_streams}")

    def current_stream(self):
        return self.compute

    def new_event(self):
        self.n_events += 1
        return _Event(self, f"e{self.n_events}")

    def pinned_empty(self, shape, dtype):
        return np.full(shape, -1, dtype)

    def device_empty(self, shape, dtype):
        a = np.full(shape, -1, dtype)
        self.log.append(("alloc", _base(a)))
        return a

    def write_host(self, dst, src):
        self.log.append(("fill", _base(dst)))
        np.copyto(dst, src, casting="same_kind")

    def copy_to_device(self, dst, src, stream):
        self.log.append(("copy", stream.name, _base(dst), _base(src)))
        dst[...] = src


def check_ordering(log):
    """The happens-before rules of the module docstring over a log (the consumer
    logs ("use", device) when it queues work reading a delivered batch)."""
    records = {}                        # event -> (position, stream) of its latest record
    waits = {}                          # stream -> [(position, record position, record stream)]
    synced = []                         # host waits: (position, record position, record stream)
    last_copy_from, last_copy_into, last_use = {}, {}, {}

    def covered(waiter, after, on_stream):
        return any(r > after and s == on_stream for _, r, s in (synced if waiter == "host" else waits.get(waiter, [])))

    for k, op in enumerate(log):
        kind = op[0]
        if kind == "record":
            records[op[1]] = (k, op[2])
        elif kind == "wait":
            waits.setdefault(op[1], []).append((k, *records[op[2]]))
        elif kind == "synced":
            synced.append((k, *records[op[1]]))
        elif kind == "fill":
            if op[1] in last_copy_from:
                stream, c = last_copy_from[op[1]]
                assert covered("host", c, stream), f"op {k}: pinned buffer refilled while its copy (op {c}) may run"
        elif kind == "copy":
            _, stream, dev, host = op
            if dev in last_use:
                assert covered(stream, last_use[dev], "compute"), \
                    f"op {k}: device buffer overwritten while a step (op {last_use[dev]}) may read it"
            last_copy_from[host], last_copy_into[dev] = (stream, k), (stream, k)
        elif kind in ("use", "alloc"):
            if kind == "use":
                stream, c = last_copy_into[op[1]]
                assert covered("compute", c, stream), f"op {k}: batch used before its copy (op {c}) finished"
            last_use[op[1]] = k


def _loader(n=103, batch=10, **kw):
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 3, 3), np.float32)
    return DataLoader(x, np.arange(n), batch, seed=4, **kw)


def _consume(pipeline, fake=None):
    """Copies of the delivered batches (a yielded slot is reused later), logging each use."""
    out = []
    for xb, yb in pipeline:
        if fake is not None:
            fake.log.append(("use", _base(xb)))
            fake.log.append(("use", _base(yb)))
        out.append((np.array(xb), np.array(yb)))
    return out


# ---- the stand-in and the fake ------------------------------------------------------------------
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_in_order_each_once_last_smaller(depth, prefetch):
    want = [(xb.copy(), yb.copy()) for xb, yb in _loader(prefetch=prefetch)]
    for transfers in (None, FakeTransfers(done_at_once=False), FakeTransfers(done_at_once=True)):
        got = _consume(DeviceBatches(_loader(prefetch=prefetch), depth=depth, transfers=transfers), transfers)
        assert [len(y) for _, y in got] == [10] * 10 + [3]
        for (gx, gy), (wx, wy) in zip(got, want, strict=True):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
        assert sorted(np.concatenate([y for _, y in got]).tolist()) == list(range(103))
        if transfers is not None:
            check_ordering(transfers.log)


def test_fake_log_shows_the_overlap_and_the_waits():
    fake = FakeTransfers(done_at_once=False)
    pipeline = DeviceBatches(_loader(n=40), depth=2, transfers=fake)
    _consume(pipeline, fake)
    log = fake.log
    copies = [k for k, op in enumerate(log) if op[0] == "copy" and log[k - 1][0] != "copy"]  # x copies
    uses = [k for k, op in enumerate(log) if op[0] == "use"][::2]
    assert len(copies) == len(uses) == 4
    assert copies[1] < uses[0]                 # batch 2's copy is queued before step 1 runs
    assert all(copies[i + 1] < uses[i] for i in range(3))
    # two slots: batch 3 reuses slot 1, and waits for its previous copy (host) and step 1 (copy stream)
    assert pipeline.host_waits == 2 and sum(op[0] == "alloc" for op in log) == 4
    check_ordering(log)


@pytest.mark.parametrize("drop, message", [
    ({"sync"}, "pinned buffer refilled while its copy"),
    ({("wait", "copy1")}, "device buffer overwritten while a step"),
    ({("wait", "compute")}, "batch used before its copy")])
def test_check_ordering_catches_a_missing_wait(drop, message):
    fake = FakeTransfers(done_at_once=False, drop=drop)
    _consume(DeviceBatches(_loader(n=40), depth=2, transfers=fake), fake)
    with pytest.raises(AssertionError, match=message):
        check_ordering(fake.log)


def test_loader_error_names_the_batch_after_the_ones_before():
    def batches():
        for i in range(5):
            if i == 3:
                raise OSError("disk read failed")
            yield np.full((2, 1, 2, 2), i, np.float32), np.array([i, i])

    class Sized:
        def __iter__(self):
            return batches()

        def __len__(self):
            return 5
    for depth in (2, 3):
        got = []
        with pytest.raises(InputPipelineError, match=r"loading batch 4 of 5 failed: OSError: disk read failed") as info:
            for xb, yb in DeviceBatches(Sized(), depth=depth):
                got.append(int(yb[0]))
        assert got == [0, 1, 2] and info.value.batch == 4 and isinstance(info.value.__cause__, OSError)


def test_transform_and_shape_errors_name_the_batch():
    def broken(x, y, rng):
        raise ValueError("bad box")
    with pytest.raises(InputPipelineError, match=r"augmenting batch 1 of 11 with <function .*broken.*ValueError: bad"):
        next(iter(DeviceBatches(_loader(), broken, np.random.default_rng(0))))
    got = []
    with pytest.raises(InputPipelineError, match="loading batch 2 of 2 failed: ValueError: 3 inputs but 2 labels"):
        for xb, _ in DeviceBatches([(np.zeros((3, 1)), np.zeros(3)), (np.zeros((3, 1)), np.zeros(2))]):
            got.append(xb.copy())
    assert len(got) == 1
    class FailingCopy(FakeTransfers):
        def copy_to_device(self, dst, src, stream):
            raise RuntimeError("cudaErrorIllegalAddress")
    with pytest.raises(InputPipelineError, match="copying batch 1 of 11 failed: RuntimeError: cudaErrorIllegalAddress"):
        list(DeviceBatches(_loader(), transfers=FailingCopy()))
    with pytest.raises(ValueError, match="depth must be >= 2"):
        DeviceBatches([], depth=1)
    with pytest.raises(ValueError, match="needs an rng"):
        DeviceBatches([], transform=broken)


def test_early_stop_waits_for_copies_and_stops_the_loader():
    fake = FakeTransfers(done_at_once=False)
    loader = _loader(prefetch=2)
    it = iter(DeviceBatches(loader, depth=3, transfers=fake))
    next(it)
    it.close()                                  # the DataLoader's thread stops (no hang)
    synced = {op[1] for op in fake.log if op[0] == "synced"}
    copied = {op[1] for op in fake.log if op[0] == "record" and op[2] == "copy1"}
    assert copied and copied <= synced          # no pinned buffer freed under a copy


def test_batches_already_on_the_device_pass_through(monkeypatch):
    class OnDevice(np.ndarray):
        pass
    monkeypatch.setattr(backend, "is_gpu_array", lambda a: isinstance(a, OnDevice))
    batches = [(np.full((2, 1), i, np.float32), np.array([i, i])) for i in range(5)]
    batches[2] = (batches[2][0].view(OnDevice), batches[2][1])
    fake = FakeTransfers()
    got = []
    for xb, yb in DeviceBatches(batches, transfers=fake):
        got.append((xb if isinstance(xb, OnDevice) else None, int(yb[0])))
        fake.log.append(("use", _base(xb)))
    assert [y for _, y in got] == [0, 1, 2, 3, 4] and got[2][0] is batches[2][0]
    assert sum(op[0] == "copy" for op in fake.log) == 8          # 4 batches copied, x and y each
    check_ordering([op for op in fake.log if op != ("use", _base(batches[2][0]))])


def test_inputs_cast_on_the_host_copy_and_transform_runs_on_the_batch():
    x = np.random.default_rng(0).random((9, 1, 4, 4))          # float64
    seen = []

    def flip_all(xb, yb, rng):
        seen.append((xb.dtype, rng))
        return xb[..., ::-1], yb
    rng = np.random.default_rng(1)
    got = _consume(DeviceBatches(DataLoader(x, np.arange(9), 4, shuffle=False), flip_all, rng, x_dtype=np.float32))
    np.testing.assert_array_equal(np.concatenate([b for b, _ in got]), x.astype(np.float32)[..., ::-1])
    assert seen == [(np.float32, rng)] * 3


# ---- backend.CudaTransfers: the CuPy calls, against CuPy's API and a fake CuPy ------------------------
def test_the_cupy_calls_exist_in_cupys_api():
    """What CudaTransfers and DeviceDraws call, checked on the installed CuPy's classes
    (importable without a GPU): a misspelt call would otherwise only fail on a GPU."""
    import inspect
    cupy = pytest.importorskip("cupy")
    for name in ("record", "synchronize", "done"):
        assert hasattr(cupy.cuda.Event, name), name
    assert hasattr(cupy.cuda.Stream, "wait_event") and "stream" in (cupy.ndarray.set.__doc__ or "")
    import cupyx
    assert callable(cupyx.empty_pinned)
    generator = cupy.random.Generator
    for name, params in (("integers", ("size", "dtype")), ("random", ("size", "dtype")),
                         ("standard_normal", ("size", "dtype")), ("beta", ("size",))):
        doc = getattr(generator, name).__doc__.splitlines()[0]
        assert all(p in doc for p in params), doc
    assert callable(cupy.pad) and callable(cupy.argsort) and inspect.isclass(cupy.ndarray)


class _DeviceArray(np.ndarray):
    """A NumPy array with CuPy's ndarray.set(arr, stream)."""
    log = None

    def set(self, arr, stream=None):
        assert stream is not None and arr.dtype == self.dtype and arr.shape == self.shape
        _DeviceArray.log.append(("set", stream.name))
        self[...] = arr


def test_cuda_transfers_through_a_fake_cupy(monkeypatch):
    log = []
    _DeviceArray.log = log

    class Event:
        def __init__(self, disable_timing=False):
            assert disable_timing
            self.done = False

        def record(self, stream=None):
            log.append(("record", stream.name))
            self.done = False

        def synchronize(self):
            log.append(("synchronize",))
            self.done = True

    class Stream:
        def __init__(self, non_blocking=False, name="copy"):
            self.name = name

        def wait_event(self, event):
            log.append(("wait", self.name))

    compute = Stream(name="compute")

    class Cuda:
        pass
    Cuda.Event, Cuda.Stream = Event, Stream
    Cuda.get_current_stream = staticmethod(lambda: compute)
    fake = type("FakeCupy", (), {"cuda": Cuda, "ndarray": _DeviceArray, "empty": staticmethod(
        lambda shape, dtype: np.full(shape, -1, dtype).view(_DeviceArray))})
    monkeypatch.setattr(backend, "cupy", fake)
    monkeypatch.setattr(backend, "pinned_empty", lambda shape, dtype: np.full(shape, -2, dtype))
    transfers = backend.CudaTransfers()
    pipeline = DeviceBatches(_loader(n=25), depth=2, transfers=transfers)
    got = [(np.array(x), np.array(y)) for x, y in pipeline]
    want = list(_loader(n=25))
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)
    assert ("set", "copy") in log and ("wait", "compute") in log and pipeline.host_waits == 1


# ---- the Trainer and `gpucnn train` -------------------------------------------------------------
def _trainer(**kw):
    grandom.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    return Trainer(model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9), **kw)


def _data():
    data = np.random.default_rng(5)
    return data.random((70, 1, 8, 8)).astype(np.float32), data.integers(0, 5, 70)


def _fit(trainer, transform=None, epochs=2):
    x, y = _data()
    grandom.manual_seed(11)
    history = trainer.fit(DataLoader(x, y, 16, transform=transform), epochs=epochs)
    return history, [p.data.copy() for p in trainer.model.parameters()]


@pytest.mark.parametrize("kw", [dict(sync="step"), dict(sync="deferred"), dict(sync="deferred", cuda_graph=True)])
def test_cpu_training_through_the_stand_in_pipeline_is_bitwise_unchanged(kw):
    aug = build_augmentation(["crop", "flip", "mixup"], 5, 8)
    plain = _trainer(**kw)
    assert not plain.pipeline_on() and not plain.augment_on_device()        # the CPU defaults: off
    want_hist, want_w = _fit(plain, aug)
    assert plain.last_pipeline is None
    piped = _trainer(input_pipeline=True, gpu_augment=False, **kw)          # host augmentations, stand-in copies
    got_hist, got_w = _fit(piped, aug)
    assert isinstance(piped.last_pipeline, DeviceBatches) and piped.last_pipeline.transform is None
    for g, w in zip(got_w, want_w, strict=True):
        np.testing.assert_array_equal(g, w)
    assert [(h["train_loss"], h["train_accuracy"]) for h in got_hist] == \
        [(h["train_loss"], h["train_accuracy"]) for h in want_hist]


def test_gpu_augment_moves_the_loader_transform_into_the_pipeline():
    calls = []

    def spy(xb, yb, rng):
        calls.append(rng)
        return xb, yb
    trainer = _trainer(input_pipeline=True, gpu_augment=True)
    assert trainer.augment_on_device()
    _fit(trainer, spy, epochs=1)
    assert len(calls) == 5 and all(r is grandom.device_generator(np) for r in calls)
    assert trainer.last_pipeline.transform is spy and trainer.last_pipeline.loader.transform is None
    with pytest.raises(ValueError, match="gpu_augment=True needs the input pipeline"):
        _trainer(gpu_augment=True).augment_on_device()
    with pytest.raises(ValueError, match="input_pipeline must be True, False or 'auto'"):
        _trainer(input_pipeline="on")


def test_train_command_input_pipeline_choices(capsys):
    from gpucnn import cli
    base = ["train", "--dataset", "digits", "--subset", "120", "--model", "lenet_bn", "--device", "cpu",
            "--epochs", "1", "--no-progress", "--val-split", "0"]
    assert cli.main(base + ["--input-pipeline", "on"]) == 2
    assert "--input-pipeline on: it needs a GPU (the device is cpu); use --input-pipeline auto or off" \
        in capsys.readouterr().err
    assert cli.main(base + ["--gpu-augment", "on"]) == 2
    assert "--gpu-augment on: it needs a GPU" in capsys.readouterr().err
    assert cli.main(base + ["--input-pipeline", "off", "--gpu-augment", "off", "--augment", "flip"]) == 0


# ---- on a GPU (pytest -m gpu, part of make gpu-check): not yet run --------------------------------
@pytest.mark.gpu
def test_gpu_pipeline_delivers_the_loader_batches():
    want = [(xb.copy(), yb.copy()) for xb, yb in _loader()]
    got = []
    for xb, yb in DeviceBatches(_loader(), depth=2, gpu=True):
        assert backend.is_gpu_array(xb) and backend.is_gpu_array(yb)
        got.append((backend.to_cpu(xb), backend.to_cpu(yb)))
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_gpu_training_with_the_pipeline_equals_without_bitwise(cuda_graph):
    aug = build_augmentation(["crop", "flip"], 5, 8)
    results = []
    for pipeline in (False, True):
        trainer = _trainer(device="gpu", input_pipeline=pipeline, gpu_augment=False, cuda_graph=cuda_graph)
        hist, weights = _fit(trainer, aug, epochs=2)
        results.append(([backend.to_cpu(w) for w in weights], [h["train_loss"] for h in hist]))
    for g, w in zip(results[1][0], results[0][0], strict=True):
        np.testing.assert_array_equal(g, w)
    assert results[1][1] == results[0][1]


@pytest.mark.gpu
def test_gpu_augment_trains_with_device_draws():
    aug = build_augmentation(["crop", "flip", "cutout", "noise", "mixup", "cutmix"], 5, 8)
    trainer = _trainer(device="gpu")
    assert trainer.pipeline_on() and trainer.augment_on_device()
    hist, _ = _fit(trainer, aug, epochs=2)
    assert trainer.last_pipeline.transform is aug and np.isfinite(hist[-1]["train_loss"])
