"""The float32 conv precision policy (gpucnn.precision), the per-call
`precision=` keyword, the autotune switch and its cache
(gpucnn.backends, gpucnn.functional._autotune)."""
import json
import threading

import numpy as np
import pytest

import gpucnn
import gpucnn.functional as F
from gpucnn import backends, precision
from gpucnn.functional import _autotune, _gpu_launch, conv3d_gpu, conv_gpu
from gpucnn.testing import reference as ref

from test_kernels_emulated import cxx, dev, emulator_build  # noqa: F401  (fixtures)

HIGHEST_TOL = precision.TOLERANCE["highest"]   # relative L2 against the float64 reference


@pytest.fixture(autouse=True)
def fresh_policy(monkeypatch):
    """Each test starts from the default and leaves the process-wide value alone."""
    monkeypatch.setattr(precision, "_process_default", precision.DEFAULT)


def rel_l2(out, expected):
    return np.linalg.norm(out.astype(np.float64) - expected) / np.linalg.norm(expected)


# ---------------------------------------------------------------------------
# The API

def test_default_and_set_get_round_trip():
    assert gpucnn.get_float32_conv_precision() == "highest"
    for p in ("high", "medium", "highest"):
        gpucnn.set_float32_conv_precision(p)
        assert gpucnn.get_float32_conv_precision() == p


@pytest.mark.parametrize("bad", ["HIGH", "low", "", None, 1, "tf32"])
def test_bad_precision_names_the_allowed_values(bad):
    with pytest.raises(ValueError, match="'highest', 'high', 'medium'.*got"):
        gpucnn.set_float32_conv_precision(bad)
    with pytest.raises(ValueError, match="'highest', 'high', 'medium'"):
        with gpucnn.float32_conv_precision(bad):
            pass
    assert gpucnn.get_float32_conv_precision() == "highest"


def test_context_manager_nests_restores_and_survives_exceptions():
    gpucnn.set_float32_conv_precision("high")
    with gpucnn.float32_conv_precision("medium") as p:
        assert p == "medium" and gpucnn.get_float32_conv_precision() == "medium"
        with gpucnn.float32_conv_precision("highest"):
            assert gpucnn.get_float32_conv_precision() == "highest"
        assert gpucnn.get_float32_conv_precision() == "medium"
        with pytest.raises(KeyError):
            with gpucnn.float32_conv_precision("high"):
                raise KeyError
        assert gpucnn.get_float32_conv_precision() == "medium"
        gpucnn.set_float32_conv_precision("high")         # changes the block's value only
        assert gpucnn.get_float32_conv_precision() == "high"
    assert gpucnn.get_float32_conv_precision() == "high"   # the process-wide value
    assert precision._process_default == "high"


def test_block_is_thread_local_and_the_default_is_process_wide():
    seen = {}
    started, release = threading.Event(), threading.Event()

    def other():
        seen["before"] = gpucnn.get_float32_conv_precision()
        started.set()
        release.wait(5)
        seen["after"] = gpucnn.get_float32_conv_precision()

    t = threading.Thread(target=other)
    with gpucnn.float32_conv_precision("medium"):
        t.start()
        started.wait(5)
        gpucnn.set_float32_conv_precision("high")          # inside the block: block only
        release.set()
        t.join(5)
    assert seen == {"before": "highest", "after": "highest"}
    gpucnn.set_float32_conv_precision("medium")            # outside: every thread
    t = threading.Thread(target=lambda: seen.update(later=gpucnn.get_float32_conv_precision()))
    t.start()
    t.join(5)
    assert seen["later"] == "medium"


CONV_CALLS = {
    "conv1d": lambda p: F.conv1d(np.ones((1, 2, 5), np.float32), np.ones((3, 2, 2), np.float32), precision=p),
    "conv2d_backward_data": lambda p: F.conv2d_backward_data(
        np.ones((1, 3, 4, 4), np.float32), np.ones((3, 2, 2, 2), np.float32), (1, 2, 5, 5), precision=p),
    "conv3d_backward_filter": lambda p: F.conv3d_backward_filter(
        np.ones((1, 3, 2, 2, 2), np.float32), np.ones((1, 2, 3, 3, 3), np.float32), (3, 2, 2, 2, 2),
        precision=p),
}


@pytest.mark.parametrize("op", CONV_CALLS)
def test_per_call_precision_is_checked_on_the_cpu(op):
    CONV_CALLS[op]("medium")
    with pytest.raises(ValueError, match=f"{op}: precision must be one of 'highest', 'high', 'medium'"):
        CONV_CALLS[op]("fp8")


def test_precision_is_keyword_only():
    x, w = np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(TypeError):
        F.conv2d(x, w, None, 1, 0, None, "high")


# Every functional conv op with the precision it must hand to the GPU launcher.
ALL_CONV_OPS = [(nd, d) for nd in (1, 2, 3) for d in ("forward", "backward_data", "backward_filter")]


def _call_conv(nd, direction, to_device, precision_kw):
    x = to_device(np.ones((1, 2) + (4,) * nd, np.float32))
    w = to_device(np.ones((3, 2) + (2,) * nd, np.float32))
    dy = to_device(np.ones((1, 3) + (3,) * nd, np.float32))
    name = {1: "conv1d", 2: "conv2d", 3: "conv3d"}[nd]
    if direction == "forward":
        return getattr(F, name)(x, w, **precision_kw)
    if direction == "backward_data":
        return getattr(F, f"{name}_backward_data")(dy, w, x.shape, **precision_kw)
    return getattr(F, f"{name}_backward_filter")(dy, x, w.shape, **precision_kw)


@pytest.mark.parametrize("nd, direction", ALL_CONV_OPS)
def test_gpu_launchers_receive_the_per_call_precision_over_the_policy(dev, monkeypatch, nd, direction):
    """On the (emulated) GPU path the launcher gets precision= when given,
    else the block's value, else the process-wide value."""
    module = conv3d_gpu if nd == 3 else conv_gpu
    real, got = getattr(module, direction), []

    def spy(*args, **kw):
        got.append(kw["precision"])
        return real(*args, **kw)
    monkeypatch.setattr(module, direction, spy)
    to_dev = gpucnn.backend.to_gpu
    gpucnn.set_float32_conv_precision("medium")
    _call_conv(nd, direction, to_dev, {})
    with gpucnn.float32_conv_precision("high"):
        _call_conv(nd, direction, to_dev, {})
        _call_conv(nd, direction, to_dev, {"precision": "highest"})
    _call_conv(nd, direction, to_dev, {"precision": "high"})
    assert got == ["medium", "high", "highest", "high"]


@pytest.mark.parametrize("p", precision.PRECISIONS)
@pytest.mark.parametrize("nd, direction", ALL_CONV_OPS)
def test_cpu_results_stay_within_the_highest_tolerance_in_every_mode(nd, direction, p):
    """The CPU computes every mode in float32: "high" and "medium" give the
    "highest" accuracy and the same bits as "highest"."""
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 3) + (7,) * nd).astype(np.float32)
    w = rng.standard_normal((4, 3) + (3,) * nd).astype(np.float32)
    stride, padding = 2, 1
    dy = rng.standard_normal(ref.conv_forward_ref(x, w, None, stride, padding).shape).astype(np.float32)
    name = {1: "conv1d", 2: "conv2d", 3: "conv3d"}[nd]
    if direction == "forward":
        fn, args, expected = getattr(F, name), (x, w, None), ref.conv_forward_ref(x, w, None, stride, padding)
    elif direction == "backward_data":
        fn, args = getattr(F, f"{name}_backward_data"), (dy, w, x.shape)
        expected = ref.conv_backward_data_ref(dy, w, x.shape, stride, padding)
    else:
        fn, args = getattr(F, f"{name}_backward_filter"), (dy, x, w.shape)
        expected = ref.conv_backward_filter_ref(dy, x, w.shape, stride, padding)
    out = fn(*args, stride, padding, precision=p)
    assert out.dtype == np.float32 and rel_l2(out, expected) <= HIGHEST_TOL
    with gpucnn.float32_conv_precision(p):
        np.testing.assert_array_equal(fn(*args, stride, padding), fn(*args, stride, padding, precision="highest"))


# ---------------------------------------------------------------------------
# Version choice and the autotuner

TABLE = {"forward": (1, 2, 3)}


def test_version_choice_without_autotune_is_a_fixed_function_of_the_inputs(monkeypatch):
    monkeypatch.setattr(backends, "autotune", False)
    pick = lambda **kw: _gpu_launch.select_version(TABLE, "forward", None, tensor_core=(3,),  # noqa: E731
                                                   shapes={"x": (1,)}, run=lambda v: 1 / 0, **kw)
    assert pick(gemm_rows=64, precision="highest") == 2          # SIMT for "highest"
    assert pick(gemm_rows=8, precision="highest") == 1
    assert pick(gemm_rows=64, precision="high") == 3              # tensor cores when permitted
    assert pick(gemm_rows=64, precision="medium") == 3
    assert pick(gemm_rows=8, precision="medium") == 1             # too few rows for a tile
    assert pick(gemm_rows=64, precision="high", dtype=np.float64) == 2
    # {version: block-tile rows}: the largest tile the GEMM rows fill, else the smallest
    table = {"forward": (1, 2, 3, 4)}
    pick2 = lambda rows: _gpu_launch.select_version(table, "forward", None, gemm_rows=rows,  # noqa: E731
                                                    precision="high", tensor_core={3: 64, 4: 128})
    assert [pick2(r) for r in (8, 16, 64, 127, 128, 512)] == [1, 3, 3, 3, 4, 4]
    with pytest.raises(ValueError, match="forward: kernel version 3 .*float32 or float16.*float64"):
        _gpu_launch.select_version(TABLE, "forward", 3, dtype=np.float64, tensor_core=(3,))
    with pytest.raises(ValueError, match="version 4 does not exist"):
        _gpu_launch.select_version(TABLE, "forward", 4, tensor_core=(3,))


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_autotune, "CACHE", _autotune.Cache())
    monkeypatch.setattr(_autotune, "gpu_name", lambda: "Fake GPU")
    monkeypatch.setattr(backends, "autotune", True)
    return tmp_path


def test_autotune_times_each_candidate_once_and_caches_in_memory_and_json(tuner, monkeypatch):
    times = {1: 3.0, 2: 1.0, 3: 2.0}
    timed = []

    def timer(fn):
        v = fn()
        timed.append(v)
        return times[v]
    monkeypatch.setattr(_autotune, "time_ms", timer)
    args = dict(tensor_core=(3,), gemm_rows=64, precision="high", shapes={"x": (2, 3, 8, 8), "s": (1, 1)},
                run=lambda v: v)
    assert _gpu_launch.select_version(TABLE, "forward", None, **args) == 2
    assert sorted(timed) == [1, 2, 3]
    assert _gpu_launch.select_version(TABLE, "forward", None, **args) == 2 and len(timed) == 3
    data = json.loads((tuner / _autotune.FILE_NAME).read_text())
    key = "forward|x=2x3x8x8|s=1x1|float32|high|Fake GPU"
    assert data == {key: {"version": 2, "times_ms": {"1": 3.0, "2": 1.0, "3": 2.0}}}
    # A new process (fresh memory) reads the file instead of timing again.
    monkeypatch.setattr(_autotune, "CACHE", _autotune.Cache())
    assert _gpu_launch.select_version(TABLE, "forward", None, **args) == 2 and len(timed) == 3
    # Another precision (or dtype, shape, GPU) is another key, timed anew; for
    # "highest" the tensor-core version runs 3xTF32, so it stays a candidate.
    assert _gpu_launch.select_version(TABLE, "forward", None, **{**args, "precision": "highest"}) == 2
    assert sorted(timed[3:]) == [1, 2, 3]
    # float64: no tensor-core candidate.
    assert _gpu_launch.select_version(TABLE, "forward", None, **{**args, "dtype": np.float64}) == 2
    assert sorted(timed[6:]) == [1, 2]
    # Off: the fixed choice, no timing.
    monkeypatch.setattr(backends, "autotune", False)
    assert _gpu_launch.select_version(TABLE, "forward", None, **args) == 3 and len(timed) == 8


def test_autotune_cache_ignores_a_corrupt_file_and_stale_versions(tuner):
    path = tuner / _autotune.FILE_NAME
    path.write_text("{not json")
    cache = _autotune.Cache()
    assert cache.get("k") is None
    cache.put("k", 2, {2: 0.5})
    assert json.loads(path.read_text())["k"]["version"] == 2
    path.write_text(json.dumps({"k": {"version": 9}, "bad": [1]}))
    fresh = _autotune.Cache()
    assert fresh.get("bad") is None and fresh.get("k") == 9
    # select_version passes its candidates: a cached version no longer among them is re-timed.
    assert _autotune.choose("op", {}, "float32", "high", [1, 2], 1, run=lambda v: v,
                            timer=lambda fn: float(fn())) == 1


def test_autotune_flag_reads_the_environment():
    import subprocess
    import sys
    code = "import gpucnn; print(gpucnn.backends.autotune)"
    for env, want in (("1", "True"), ("0", "False"), ("", "False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**__import__("os").environ, "GPUCNN_AUTOTUNE": env}, check=True)
        assert out.stdout.strip() == want


# ---------------------------------------------------------------------------
# gpucnn bench: the "precision" field

def _bench(monkeypatch, device, precisions):
    from types import SimpleNamespace

    from gpucnn import backend
    from gpucnn.benchmark import runner, schema, suites, timing
    if device == "gpu":   # the GPU flow with NumPy arrays standing in (as tests/test_bench.py does)
        monkeypatch.setattr(backend, "cupy", SimpleNamespace(
            __version__="stand-in", ndarray=type("NoSuchArray", (), {}), asarray=np.array,
            get_default_memory_pool=lambda: SimpleNamespace(free_all_blocks=lambda: None),
            cuda=SimpleNamespace(Device=lambda: SimpleNamespace(id=0),
                                 get_current_stream=lambda: SimpleNamespace(ptr=0),
                                 runtime=SimpleNamespace(cudaDevAttrL2CacheSize=38,
                                                         deviceGetAttribute=lambda attr, dev: 1 << 16))))
        monkeypatch.setattr(backend, "resolve_device", lambda device=None: "gpu")
        monkeypatch.setattr(runner, "time_gpu", timing.time_cpu)
    monkeypatch.setattr(runner.ceilings, "measure", lambda device, small=False: {"device": device, "skipped": "test"})
    cases = [suites.conv("c", 1, 2, 6, 3, 3, padding=1), suites.pool("p", 1, 2, 6, 2)]
    doc = runner.Runner(device=device, repeats=1, warmup=0, use_torch=False, log=lambda m: None,
                        precisions=precisions).run(cases, ["conv_forward", "max_pool_forward"], suite="t")
    assert schema.validate(doc) == []
    return {e["op"]: e["versions"] for e in doc["results"]}, doc


def test_bench_cpu_results_carry_the_precision_they_computed(monkeypatch):
    versions, doc = _bench(monkeypatch, "cpu", ("high",))
    assert [v.get("precision") for v in versions["conv_forward"]] == ["highest"]   # CPU: float32
    assert "precision" not in versions["max_pool_forward"][0]
    assert doc["settings"]["precisions"] == ["high"]


def test_bench_gpu_times_each_precision_of_the_tensor_core_version(monkeypatch):
    from gpucnn.benchmark import ops, report, runner
    versions, doc = _bench(monkeypatch, "gpu", ("highest", "high", "medium"))
    pairs = [(v["version"], v["precision"]) for v in versions["conv_forward"]]
    assert pairs == [("1", "highest"), ("2", "highest"), ("3", "highest"), ("3", "high"), ("3", "medium"),
                     ("4", "highest"), ("4", "high"), ("4", "medium")]
    tolerances = [v["check"]["tolerance"] for v in versions["conv_forward"]]
    assert tolerances == [ops.CHECK_TOLERANCES[p] for _, p in pairs]
    assert "3 medium" in report.text_report(doc)
    with pytest.raises(ValueError, match="'highest', 'high', 'medium'"):
        runner.Runner(device="cpu", use_torch=False, precisions=("fast",))
