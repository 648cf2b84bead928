"""The fused conv epilogues (issue 11) of the SIMT kernels v1/v2, run through
gpucnn.functional.conv2d_bias_relu(_backward) and conv_gpu's launchers in the
CUDA emulator (tests/cuda_emulator: g++ with ASan/UBSan, outputs poisoned
with NaN); not a substitute for a GPU run.

Each case is checked against the float64 reference (forward: relu(conv + b);
backward: dz = dy * [y > 0] with the kernel's own y, so that a value rounding
across zero cannot flip the mask) and against the unfused GPU path (the plain
kernel, then + b and ReLU as array code; the plain backward kernels on dz):
y, dx and dw bitwise, db (summed in another order) within tolerance.
"""
import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn import backend, nn
from gpucnn.functional import conv_gpu
from gpucnn.testing import reference as ref

from test_kernels_emulated import LAUNCHED, assert_close, cxx, dev, emulator_build, run  # noqa: F401

# (N, C, K, spatial, kernel, stride, padding, dilation, groups, layout)
CASES = [
    (1, 1, 1, (1, 1), (1, 1), 1, 0, 1, 1, "contiguous"),            # smallest
    (1, 3, 5, (7, 9), (3, 2), (2, 1), (1, 0), 1, 1, "transposed"),  # batch 1, odd, rectangular
    (2, 5, 70, (6, 5), (3, 3), 2, 1, 1, 1, "sliced"),               # K > 64: two row tiles
    (3, 67, 4, (5, 4), (2, 3), 1, (1, 1), 1, 1, "contiguous"),      # C > 64, ragged Kgemm
    (2, 2, 3, (13, 11), (3, 3), 1, 1, 1, 1, "sliced"),              # backward-filter split > 1
    (2, 4, 6, (7, 8), (3, 3), 1, "same", 2, 2, "transposed"),       # dilation, groups, "same"
]
MODES = {"bias_relu": (True, True), "relu": (False, True), "bias": (True, False)}


def _backward(*args, **kw):
    """conv2d_bias_relu_backward without its None db (bias=False)."""
    return tuple(r for r in F.conv2d_bias_relu_backward(*args, **kw) if r is not None)


def _case_id(c):
    return "N{}C{}K{}-x{}-k{}-s{}-p{}-d{}-g{}-{}".format(*c).replace(" ", "")


def _problem(case, dtype, seed=0):
    n, c, k, spatial, kernel, *_, groups, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + spatial).astype(dtype)
    w = rng.standard_normal((k, c // groups) + kernel).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return x, w, b


def _geometry(case):
    return dict(stride=case[5], padding=case[6], dilation=case[7], groups=case[8])


# every mode on two cases, bias + ReLU on the others (the suite's time budget)
# and the float64 kernels, every mode and version, on one case
SWEEP = [pytest.param(case, v, mode, np.float32, id=f"{_case_id(case)}-v{v}-{mode}")
         for i, case in enumerate(CASES) for v in (1, 2)
         for mode in (MODES if i in (1, 5) else ["bias_relu"])]
SWEEP += [pytest.param(CASES[1], v, mode, np.float64, id=f"{_case_id(CASES[1])}-v{v}-{mode}-f64")
          for v in (1, 2) for mode in MODES]


@pytest.mark.parametrize("case, version, mode, dtype", SWEEP)
def test_fused_epilogues_match_reference_and_unfused_path(dev, case, version, mode, dtype):
    with_bias, relu = MODES[mode]
    x, w, b = _problem(case, dtype)
    b = b if with_bias else None
    geo, layout = _geometry(case), case[9]
    y = run(F.conv2d_bias_relu, x, w, b, **geo, relu=relu, version=version, layout=layout)
    z = ref.conv_forward_ref(x, w, b, **geo)
    assert_close(y, np.maximum(z, 0) if relu else z, dtype)
    unfused = run(F.conv2d, x, w, b, **geo, version=version, layout=layout)
    np.testing.assert_array_equal(y, unfused * (unfused > 0) if relu else unfused)

    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx, dw, *db = run(_backward, dy, y, x, w, **geo, relu=relu, bias=with_bias, version=version, layout=layout)
    dz = dy * (y > 0) if relu else dy
    assert_close(dx, ref.conv_backward_data_ref(dz, w, x.shape, **geo), dtype)
    assert_close(dw, ref.conv_backward_filter_ref(dz, x, w.shape, **geo), dtype)
    if with_bias:
        assert_close(db[0], dz.astype(np.float64).sum(axis=(0, 2, 3)), dtype)
    else:
        assert db == []
    np.testing.assert_array_equal(dx, run(F.conv2d_backward_data, dz, w, x.shape, **geo, version=version))
    np.testing.assert_array_equal(dw, run(F.conv2d_backward_filter, dz, x, w.shape, **geo, version=version))
    launched = dev.launched()
    suffix = ("_bias" if with_bias else "") + ("_relu" if relu else "") + f"_v{version}"
    assert {f"conv2d_forward{suffix}", f"conv2d_backward_filter{suffix}"} <= launched
    assert (f"conv2d_backward_data_relu_v{version}" in launched) == relu


@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=_case_id)
def test_float64_and_split_reduce_of_dw_and_db(dev, case):
    """float64 kernels; the backward-filter split into chunks reduces [dw | db]."""
    x, w, b = _problem(case, np.float64, seed=2)
    geo = _geometry(case)
    y = run(F.conv2d_bias_relu, x, w, b, **geo, version=2)
    assert_close(y, np.maximum(ref.conv_forward_ref(x, w, b, **geo), 0), np.float64)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx, dw, db = run(F.conv2d_bias_relu_backward, dy, y, x, w, **geo, version=2)
    dz = dy * (y > 0)
    assert_close(dw, ref.conv_backward_filter_ref(dz, x, w.shape, **geo), np.float64)
    assert_close(db, dz.sum(axis=(0, 2, 3)), np.float64)
    assert_close(dx, ref.conv_backward_data_ref(dz, w, x.shape, **geo), np.float64)
    k = w.shape[0]
    if case is CASES[4]:
        assert conv_gpu.filter_split(k, w.size // k, dy.size // k)[0] > 1, "case no longer splits"
        assert "conv2d_backward_filter_reduce_v2" in dev.launched()


def test_fused_backward_filter_is_bitwise_deterministic(dev):
    """Blocks (and barrier-free threads) in opposite orders: the same dw and db bits."""
    case = CASES[4]
    x, w, b = _problem(case, np.float32, seed=4)
    geo = _geometry(case)
    y = run(F.conv2d_bias_relu, x, w, b, **geo, version=2)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    for v in (1, 2):
        first = run(F.conv2d_bias_relu_backward, dy, y, x, w, **geo, version=v)
        dev.reverse = True
        second = run(F.conv2d_bias_relu_backward, dy, y, x, w, **geo, version=v)
        dev.reverse = False
        for a, c in zip(first, second):
            np.testing.assert_array_equal(a, c)


def test_kernels_without_an_epilogue_run_it_as_array_code(dev):
    """Depthwise (version None) and an empty input sum take the array-code epilogue."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y = run(F.conv2d_bias_relu, x, w, b, padding=1, groups=4)
    assert "conv2d_depthwise_forward_v1" in dev.launched()
    z = ref.conv_forward_ref(x, w, b, padding=1, groups=4)
    assert_close(y, np.maximum(z, 0), np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = run(F.conv2d_bias_relu_backward, dy, y, x, w, padding=1, groups=4)
    dz = dy * (y > 0)
    assert_close(dw, ref.conv_backward_filter_ref(dz, x, w.shape, padding=1, groups=4), np.float32)
    assert_close(db, dz.astype(np.float64).sum(axis=(0, 2, 3)), np.float32)
    assert_close(dx, ref.conv_backward_data_ref(dz, w, x.shape, padding=1, groups=4), np.float32)
    empty = run(F.conv2d_bias_relu, np.ones((2, 0, 4, 4), np.float32), np.ones((3, 0, 3, 3), np.float32),
                np.array([1.0, -1.0, 0.5], np.float32), version=2)
    np.testing.assert_array_equal(empty, np.broadcast_to(np.array([1, 0, 0.5], np.float32)[:, None, None],
                                                         (2, 3, 2, 2)))


def test_fused_conv_relu_layer_on_the_emulated_device(dev):
    """nn.fuse(Conv2d + ReLU) on the device: the fused kernels run and the
    results equal the unfused layers' (y, dx, dw bitwise; db within tolerance)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    plain = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.ReLU())
    fused = nn.fuse(nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.ReLU()))
    fused.load_state_dict(plain.state_dict())
    out = []
    for model in (plain, fused):
        model.to_gpu()
        y = model(backend.to_gpu(x))
        dy = backend.to_gpu(np.random.default_rng(8).standard_normal(y.shape).astype(np.float32))
        dx = model.backward(dy)
        out.append([backend.to_cpu(a) for a in (y, dx, model[0].weight.grad, model[0].bias.grad)])
    for i in range(3):
        np.testing.assert_array_equal(out[1][i], out[0][i])
    np.testing.assert_allclose(out[1][3], out[0][3], rtol=1e-5, atol=1e-5)
    kinds = {name.rsplit("_v", 1)[0] for name in dev.launched()}   # versions picked by shape
    assert {"conv2d_forward_bias_relu", "conv2d_backward_filter_bias_relu", "conv2d_backward_data_relu"} <= kinds


def test_the_sweep_launched_every_fused_kernel_in_both_dtypes(request):
    """Last in the file: every fused-epilogue kernel ran at least once per dtype
    (only meaningful when the whole file ran)."""
    module = request.node.getparent(pytest.Module)
    selected = {item.nodeid for item in request.session.items}
    if any(item.nodeid not in selected for item in module.collect()):
        pytest.skip("part of this file was deselected")
    wanted = {(name, dt) for name in conv_gpu.FUSED_KERNELS for dt in ("float32", "float64")}
    assert wanted - set(LAUNCHED) == set()


def test_sanitizer_driver_runs_the_fused_kernels(dev, monkeypatch):
    """The compute-sanitizer driver's conv cases include the fused epilogues:
    bias + ReLU forward and the masked backward (dx, dw, db), v1 and v2,
    against the float64 reference (one small 2-D case here, pools left out)."""
    from gpucnn import backend
    from gpucnn.devtools import sanitizer_driver
    monkeypatch.setattr(sanitizer_driver, "CONV_CASES", ((2, 3, (9, 7), 5, (3, 2), (1, 1), (1, 0)),))
    monkeypatch.setattr(sanitizer_driver, "POOL_CASES", ())
    monkeypatch.setattr(backend, "synchronize", lambda *a: None)
    lines = []
    assert sanitizer_driver.run_all(log=lines.append) == []
    assert sum("bias_relu" in line for line in lines) == 2 * 2 * 4   # 2 dtypes x 2 versions x (y, dx, dw, db)
    assert {"conv2d_forward_bias_relu_v1", "conv2d_forward_bias_relu_v2"} <= dev.launched()
