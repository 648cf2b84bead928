"""Fused epilogues on the CPU (issue 11): gpucnn.functional.conv2d_bias_relu
and its backward against the float64 reference and the unfused ops, and
gpucnn.nn.fuse (Conv2d/BatchNorm + ReLU) against the unfused model: outputs
bitwise, gradients bitwise or within float32 rounding, float64 gradient checks.
(The GPU kernels' fused variants: tests/test_conv_epilogues_emulated.py.)
"""
import copy

import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn import backend, models, nn
from gpucnn.gradcheck import gradcheck
from gpucnn.nn import norm
from gpucnn.testing import reference as ref

# (x shape, w shape, stride, padding, dilation, groups)
CASES = [
    ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0, 1, 1),
    ((1, 3, 7, 9), (5, 3, 3, 2), (2, 1), (1, 0), 1, 1),
    ((2, 4, 8, 7), (6, 2, 3, 3), 1, "same", 2, 2),
    ((3, 5, 6, 5), (4, 5, 2, 3), 2, 1, 1, 1),
]


def _problem(case, dtype, seed=0):
    xs, ws = case[:2]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    return x, rng.standard_normal(ws).astype(dtype), rng.standard_normal(ws[0]).astype(dtype)


@pytest.mark.parametrize("relu,with_bias", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_functional_matches_reference_and_unfused_ops(case, relu, with_bias):
    x, w, b = _problem(case, np.float32)
    b = b if with_bias else None
    geo = dict(stride=case[2], padding=case[3], dilation=case[4], groups=case[5])
    x_view = np.asfortranarray(x)   # a non-contiguous layout goes through too
    y = F.conv2d_bias_relu(x_view, w, b, **geo, relu=relu)
    z = F.conv2d(x, w, b, **geo)
    np.testing.assert_array_equal(y, z * (z > 0) if relu else z)          # the same arithmetic
    expected = ref.conv_forward_ref(x, w, b, **geo)
    np.testing.assert_allclose(y, np.maximum(expected, 0) if relu else expected, rtol=1e-5, atol=1e-5)

    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx, dw, db = F.conv2d_bias_relu_backward(dy, y, x_view, w, **geo, relu=relu, bias=with_bias)
    dz = dy * (y > 0) if relu else dy
    np.testing.assert_array_equal(dx, F.conv2d_backward_data(dz, w, x.shape, **geo))
    np.testing.assert_array_equal(dw, F.conv2d_backward_filter(dz, x, w.shape, **geo))
    np.testing.assert_allclose(dx, ref.conv_backward_data_ref(dz, w, x.shape, **geo), rtol=1e-4, atol=1e-4)
    if with_bias:
        np.testing.assert_allclose(db, dz.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        assert db.dtype == np.float32
    else:
        assert db is None


def test_functional_float16_and_errors():
    x, w, b = _problem(CASES[1], np.float16)
    y = F.conv2d_bias_relu(x, w, b, stride=(2, 1), padding=(1, 0))
    assert y.dtype == np.float16
    dx, dw, db = F.conv2d_bias_relu_backward(np.ones_like(y), y, x, w, stride=(2, 1), padding=(1, 0))
    assert (dx.dtype, dw.dtype, db.dtype) == (np.float16,) * 3
    x, w, b = _problem(CASES[1], np.float32)
    with pytest.raises(ValueError, match="conv2d_bias_relu: bias must have shape"):
        F.conv2d_bias_relu(x, w, b[:2])
    with pytest.raises(ValueError, match="conv2d_bias_relu: .*channels"):
        F.conv2d_bias_relu(x[:, :2], w, b)
    y = F.conv2d_bias_relu(x, w, b)
    with pytest.raises(ValueError, match=r"conv2d_bias_relu_backward: the forward's output y has shape"):
        F.conv2d_bias_relu_backward(y, y[:, :2], x, w)
    with pytest.raises(TypeError, match="conv2d_bias_relu_backward: all arrays must have the same dtype"):
        F.conv2d_bias_relu_backward(y, y.astype(np.float64), x, w)
    with pytest.raises(ValueError, match="conv2d_bias_relu_backward: output gradient dy has shape"):
        F.conv2d_bias_relu_backward(y[:, :, 1:], y[:, :, 1:], x, w)


def _run(model, x, dy, steps=2):
    """Outputs, input gradients and parameter gradients of a few training steps, then eval."""
    out = []
    for _ in range(steps):
        model.zero_grad()
        y = model(x)
        out += [y, model.backward(dy)] + [p.grad for p in model.parameters()]
    model.eval()
    out.append(model(x))
    model.train()
    return out, model.state_dict()


@pytest.mark.parametrize("name", ["lenet5", "lenet_bn", "resnet_small", "mobilenet_small"])
def test_fused_model_matches_unfused(name):
    rng = np.random.default_rng(0)
    model = models.build(name, 1, 10, 12, dropout=0.0)
    fused = nn.fuse(copy.deepcopy(model))
    relus = [m for _, m in fused.named_modules() if isinstance(m, nn.ReLU)]
    assert any(r.fused for r in relus)
    bns = [m.fused_relu for _, m in fused.named_modules() if type(m) is nn.BatchNorm2d]
    # every BN is followed by a ReLU but those closing a residual body (resnet: 1 of 2 or 3 per block)
    assert all(bns) if name != "resnet_small" else sum(bns) == 4 and len(bns) == 9
    x = rng.standard_normal((3, 1, 12, 12)).astype(np.float32)
    dy = rng.standard_normal(copy.deepcopy(model)(x).shape).astype(np.float32)   # (a copy: running stats)
    plain, plain_state = _run(model, x, dy)
    got, got_state = _run(fused, x, dy)
    conv_bias = name == "lenet5"   # db summed in float64 by the fused pass, float32 pairwise by NumPy
    for i, (a, e) in enumerate(zip(got, plain)):
        if conv_bias and i > 0:
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5, err_msg=f"result {i}")
        else:
            np.testing.assert_array_equal(a, e, err_msg=f"result {i}")
    assert got_state.keys() == plain_state.keys()
    for k in plain_state:
        np.testing.assert_array_equal(got_state[k], plain_state[k], err_msg=k)
    nn.unfuse(fused)
    assert not any(r.fused for r in relus)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 4, 3, 2), (3, 4), (2, 4, 7), (0, 4, 2, 2)])
def test_cpu_batch_norm_eval_pass_is_the_array_code_bitwise(shape, dtype):
    rng = np.random.default_rng(5)
    bn = (nn.BatchNorm2d(4) if len(shape) == 4 else nn.BatchNorm1d(4)).astype(dtype).eval()
    bn.running_mean[:], bn.running_var[:] = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    bn.weight.data[:], bn.bias.data[:] = rng.standard_normal(4), rng.standard_normal(4)
    x = rng.standard_normal(shape).astype(dtype)
    expected = norm._ARRAY_CODE.eval_forward(bn, x, bn._channel_shape(x))
    np.testing.assert_array_equal(bn(x), expected)
    bn.fused_relu = True
    np.testing.assert_array_equal(bn(x), expected * (expected > 0))
    assert bn(x).dtype == dtype


def test_fuse_pairs_and_leaves_the_rest():
    shared = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), shared, nn.Conv2d(2, 2, 1), shared,
                          nn.Conv2d(2, 2, 1), nn.ReLU(), nn.ConvTranspose2d(2, 2, 1), nn.ReLU(),
                          nn.BatchNorm2d(2), nn.LeakyReLU())
    nn.fuse(model)
    assert [getattr(m, "fused_relu", None) for m in model] == \
        [False, None, False, None, True, None, None, None, False, None]
    assert not shared.fused and model[5].fused and not model[7].fused
    assert "fused ReLU" in repr(model[4]) and "fused into the previous layer" in repr(model[5])


@pytest.mark.parametrize("layer", [
    lambda: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=1),
    lambda: nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=2, bias=False),
    lambda: nn.BatchNorm2d(3),
], ids=["conv", "conv-groups-nobias", "batchnorm"])
def test_fused_pair_passes_float64_gradcheck(layer):
    first = layer()
    channels = first.in_channels if isinstance(first, nn.Conv2d) else first.num_features
    pair = nn.fuse(nn.Sequential(first, nn.ReLU())).double()
    assert first.fused_relu
    for seed in range(100):   # the first seed whose pre-activations keep away from ReLU's kink
        rng = np.random.default_rng(seed)
        for p in first.parameters():
            p.data[...] = rng.standard_normal(p.shape)
        x = rng.standard_normal((2, channels, 6, 5))
        first.fused_relu = False
        with nn.no_grad():
            z = first(x)
        first.fused_relu = True
        if np.min(np.abs(z)) > 1e-3:   # a central difference across the kink is meaningless
            break
    else:
        pytest.fail("no input away from the kink")
    ok, report = gradcheck(pair, x)
    assert ok, report


def test_fused_model_exports_to_onnx_with_the_same_outputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator
    import gpucnn.onnx
    model = nn.fuse(models.build("lenet_bn", 1, 10, 12)).eval()
    x = np.random.default_rng(3).standard_normal((2, 1, 12, 12)).astype(np.float32)
    gpucnn.onnx.export(model, x, tmp_path / "m.onnx")
    assert onnx.load(str(tmp_path / "m.onnx"))   # the fused layers export as Conv/BatchNormalization + Relu
    session = ReferenceEvaluator(str(tmp_path / "m.onnx"))
    out = session.run(None, {session.input_names[0]: x})[0]
    np.testing.assert_allclose(out, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("version", [1, 2, None])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gpu_fused_kernels_match_cpu(case, version):
    """The fused GPU kernels against the CPU path (y and the gradients)."""
    x, w, b = _problem(case, np.float32)
    geo = dict(stride=case[2], padding=case[3], dilation=case[4], groups=case[5])
    y = F.conv2d_bias_relu(x, w, b, **geo)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    expected = (y,) + F.conv2d_bias_relu_backward(dy, y, x, w, **geo)
    gx, gw, gb, gdy = map(backend.to_gpu, (x, w, b, dy))
    gy = F.conv2d_bias_relu(gx, gw, gb, **geo, version=version)
    got = (gy,) + F.conv2d_bias_relu_backward(gdy, gy, gx, gw, **geo, version=version)
    for name, a, e in zip(("y", "dx", "dw", "db"), got, expected):
        np.testing.assert_allclose(backend.to_cpu(a), e, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.gpu
def test_gpu_fused_model_matches_unfused():
    rng = np.random.default_rng(0)
    model = models.build("lenet_bn", 1, 10, 28, dropout=0.0)
    fused = nn.fuse(copy.deepcopy(model))
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    dy = rng.standard_normal((16, 10)).astype(np.float32)
    results = []
    for m in (model.to_gpu(), fused.to_gpu()):
        out, _ = _run(m, backend.to_gpu(x), backend.to_gpu(dy))
        results.append([backend.to_cpu(a) for a in out])
    for i, (a, e) in enumerate(zip(*results[::-1])):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5, err_msg=f"result {i}")
