"""Layers: float64 gradient checks of every layer, forward values against
formulas written out here (and PyTorch where it imports), the module
contract (registration, state_dict keys, caching, modes), initializers, and
GPU-vs-CPU parity (gpu marker)."""
import math

import numpy as np
import pytest

from gpucnn import backend, nn
from gpucnn import random as grandom
from gpucnn.gradcheck import gradcheck
from gpucnn.nn import init


def _away_from_zero(rng, shape, margin=0.05):
    """Normal values pushed off 0 so ReLU-like kinks are not straddled."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin, x)


def _distinct(rng, shape):
    """Tie-free values (max-pool, maxout): a shuffled ramp with gaps of 0.1."""
    return (rng.permutation(int(np.prod(shape))) * 0.1 - 1.0).reshape(shape)


# (name, layer factory, input maker): every layer the package offers.
LAYER_CASES = [
    ("conv1d", lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), lambda r: r.standard_normal((2, 2, 9))),
    ("conv2d", lambda: nn.Conv2d(2, 3, 3, stride=1, padding=1), lambda r: r.standard_normal((2, 2, 5, 6))),
    ("conv2d_s2_rect", lambda: nn.Conv2d(3, 2, (3, 2), stride=(2, 1), padding=(1, 0)),
     lambda r: r.standard_normal((2, 3, 7, 5))),
    ("conv2d_nobias", lambda: nn.Conv2d(2, 2, 2, bias=False), lambda r: r.standard_normal((1, 2, 4, 4))),
    ("conv3d", lambda: nn.Conv3d(2, 2, 2, stride=1, padding=1), lambda r: r.standard_normal((1, 2, 3, 3, 3))),
    ("maxpool1d", lambda: nn.MaxPool1d(3, stride=2, padding=1), lambda r: _distinct(r, (2, 2, 9))),
    ("maxpool2d", lambda: nn.MaxPool2d(2), lambda r: _distinct(r, (2, 2, 4, 6))),
    ("maxpool2d_overlap", lambda: nn.MaxPool2d(3, stride=2, padding=1), lambda r: _distinct(r, (1, 2, 7, 7))),
    ("maxpool3d", lambda: nn.MaxPool3d(2), lambda r: _distinct(r, (1, 2, 4, 4, 4))),
    ("avgpool1d", lambda: nn.AvgPool1d(2), lambda r: r.standard_normal((2, 2, 6))),
    ("avgpool2d", lambda: nn.AvgPool2d(3, stride=2, padding=1), lambda r: r.standard_normal((2, 2, 5, 5))),
    ("avgpool3d", lambda: nn.AvgPool3d(2, stride=1), lambda r: r.standard_normal((1, 2, 3, 3, 3))),
    ("linear", lambda: nn.Linear(5, 4), lambda r: r.standard_normal((3, 5))),
    ("flatten", lambda: nn.Flatten(), lambda r: r.standard_normal((2, 3, 2, 2))),
    ("relu", lambda: nn.ReLU(), lambda r: _away_from_zero(r, (3, 7))),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), lambda r: _away_from_zero(r, (3, 7))),
    ("sigmoid", lambda: nn.Sigmoid(), lambda r: 3 * r.standard_normal((3, 7))),
    ("tanh", lambda: nn.Tanh(), lambda r: r.standard_normal((3, 7))),
    ("elu", lambda: nn.ELU(alpha=0.7), lambda r: _away_from_zero(r, (3, 7))),
    ("maxout_features", lambda: nn.Maxout(3), lambda r: _distinct(r, (2, 6))),
    ("maxout_channels", lambda: nn.Maxout(2), lambda r: _distinct(r, (2, 4, 2, 3))),
    ("batchnorm1d_2d", lambda: nn.BatchNorm1d(3), lambda r: r.standard_normal((5, 3))),
    ("batchnorm1d_3d", lambda: nn.BatchNorm1d(2), lambda r: r.standard_normal((3, 2, 4))),
    ("batchnorm2d", lambda: nn.BatchNorm2d(3), lambda r: r.standard_normal((2, 3, 3, 3))),
    ("dropout", lambda: nn.Dropout(0.4), lambda r: r.standard_normal((4, 6))),
    ("sequential_cnn", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.AvgPool2d(2),
                                             nn.Flatten(), nn.Linear(8, 3)),
     lambda r: r.standard_normal((3, 1, 6, 6))),
    ("residual_identity", lambda: nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh())),
     lambda r: r.standard_normal((2, 2, 4, 4))),
    ("residual_projection", lambda: nn.Residual(nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh()),
                                                projection=nn.Conv2d(2, 3, 1, stride=2)),
     lambda r: r.standard_normal((2, 2, 4, 4))),
]


@pytest.mark.parametrize("name,make,make_input", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_gradient_check_float64(name, make, make_input):
    grandom.manual_seed(0)
    layer = make()
    x = make_input(np.random.default_rng(1))
    ok, report = gradcheck(layer, x)
    assert ok, f"{name}\n{report}"
    # every parameter was checked, plus the input
    assert len(report.entries) == 1 + len(layer.parameters())


def test_conv2d_forward_matches_direct_sum(rng):
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    x = rng.standard_normal((2, 2, 5, 5))
    w, b = layer.weight.data, layer.bias.data
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros((2, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            expected[:, :, i, j] = np.einsum("ncpq,kcpq->nk", patch, w) + b
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_linear_forward_and_weight_layout(rng):
    layer = nn.Linear(4, 3).double()
    assert layer.weight.shape == (3, 4)  # PyTorch's (out_features, in_features)
    x = rng.standard_normal((5, 4))
    np.testing.assert_allclose(layer(x), x @ layer.weight.data.T + layer.bias.data, rtol=1e-13)
    with pytest.raises(ValueError, match=r"Linear\(4, 3\).*\(5, 3\)"):
        layer(rng.standard_normal((5, 3)))


def test_activation_values():
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_allclose(nn.ReLU()(x), [0, 0, 0, 0.5, 3])
    np.testing.assert_allclose(nn.LeakyReLU(0.1)(x), [-0.3, -0.05, 0, 0.5, 3])
    np.testing.assert_allclose(nn.ELU(2.0)(x), [2 * (math.exp(-3) - 1), 2 * (math.exp(-0.5) - 1), 0, 0.5, 3])
    np.testing.assert_allclose(nn.Sigmoid()(x), 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(nn.Tanh()(x), np.tanh(x))
    with np.errstate(all="raise"):  # no overflow for huge inputs
        np.testing.assert_array_equal(nn.Sigmoid()(np.array([-1e4, 1e4])), [0.0, 1.0])
        np.testing.assert_array_equal(nn.ELU()(np.array([-1e4, 1e4])), [-1.0, 1e4])


def test_maxout_groups_consecutive_channels():
    x = np.array([[1.0, 5.0, 2.0, 7.0, 3.0, 0.0]])
    layer = nn.Maxout(2)
    np.testing.assert_array_equal(layer(x), [[5.0, 7.0, 3.0]])
    np.testing.assert_array_equal(layer.backward(np.array([[10.0, 20.0, 30.0]])),
                                  [[0, 10, 0, 20, 30, 0]])
    with pytest.raises(ValueError, match="divisible by 4"):
        nn.Maxout(4)(x)


def test_batchnorm_running_statistics_pytorch_semantics(rng):
    layer = nn.BatchNorm2d(3, momentum=0.2).double()
    batches = [rng.standard_normal((4, 3, 2, 5)) * (i + 1) + i for i in range(3)]
    mean, var = np.zeros(3), np.ones(3)
    for x in batches:
        y = layer(x)
        m = x.size // 3
        mu, biased = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        np.testing.assert_allclose(y, (x - mu[None, :, None, None]) / np.sqrt(biased[None, :, None, None] + 1e-5),
                                   rtol=1e-10, atol=1e-12)
        mean = 0.8 * mean + 0.2 * mu
        var = 0.8 * var + 0.2 * biased * m / (m - 1)
    np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, var, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 3
    layer.eval()
    x = batches[0]
    np.testing.assert_allclose(layer(x), (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5),
                               rtol=1e-10)


def test_batchnorm_cumulative_average_when_momentum_none(rng):
    layer = nn.BatchNorm1d(2, momentum=None).double()
    batches = [rng.standard_normal((6, 2)) + i for i in range(4)]
    for x in batches:
        layer(x)
    np.testing.assert_allclose(layer.running_mean, np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-12)


def test_batchnorm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    ours = nn.BatchNorm2d(3, momentum=0.3).double()
    theirs = torch.nn.BatchNorm2d(3, momentum=0.3).double()
    for _ in range(3):
        x = rng.standard_normal((4, 3, 3, 3))
        xt = torch.tensor(x, requires_grad=True)
        dout = rng.standard_normal(x.shape)
        y = ours(x)
        yt = theirs(xt)
        yt.backward(torch.tensor(dout))
        ours.zero_grad()
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.backward(dout), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-12, err_msg=key)


def test_pytorch_weights_load_and_give_the_same_outputs(rng):
    """Same names, layouts and semantics as PyTorch: a torch state_dict loads
    as is, and both nets agree in train and eval mode."""
    torch = pytest.importorskip("torch")
    tn = torch.nn
    theirs = tn.Sequential(tn.Conv2d(2, 4, 3, padding=1), tn.BatchNorm2d(4), tn.ReLU(), tn.MaxPool2d(2),
                           tn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), tn.ELU(), tn.AvgPool2d(2),
                           tn.Flatten(), tn.Linear(4, 3), tn.LeakyReLU(0.1), tn.Linear(3, 2)).double()
    ours = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.ELU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(4, 3), nn.LeakyReLU(0.1), nn.Linear(3, 2)).double()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = rng.standard_normal((3, 2, 8, 8))
    for mode in ("train", "eval"):
        getattr(theirs, mode)(), getattr(ours, mode)()
        np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_batchnorm_rejects_single_value_per_channel():
    with pytest.raises(ValueError, match="more than one value per channel"):
        nn.BatchNorm1d(3)(np.ones((1, 3), np.float32))


def test_dropout_inverted_scaling_and_eval_identity():
    grandom.manual_seed(3)
    layer = nn.Dropout(0.25)
    x = np.ones((400, 500), np.float32)
    y = layer(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(layer.backward(x), y)  # dx = dout * mask
    layer.eval()
    assert layer(x) is x
    assert nn.Dropout(1.0)(x).max() == 0.0


def test_dropout_masks_follow_the_seed():
    x = np.ones((8, 8), np.float32)
    grandom.manual_seed(11)
    a = nn.Dropout()(x)
    grandom.manual_seed(11)
    b = nn.Dropout()(x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("p", [0.25, 0.6])
def test_dropout_on_the_gpu_mask_path(p):
    """The CuPy mask (gpucnn.random's device generator): keep fraction, scaling,
    backward through the same mask, eval identity, and masks that follow the seed."""
    cupy = backend.cupy
    x = cupy.full((400, 500), 2.0, cupy.float32)
    grandom.manual_seed(7)
    layer = nn.Dropout(p)
    y = layer(x)
    assert isinstance(y, cupy.ndarray) and y.dtype == cupy.float32
    kept = backend.to_cpu(y != 0)
    assert abs(kept.mean() - (1 - p)) < 0.01  # 200,000 draws: the std of the fraction is ~0.001
    np.testing.assert_allclose(backend.to_cpu(y)[kept], 2.0 / (1 - p), rtol=1e-6)
    dout = cupy.arange(x.size, dtype=cupy.float32).reshape(x.shape)
    dx = backend.to_cpu(layer.backward(dout))
    np.testing.assert_array_equal(dx, np.where(kept, backend.to_cpu(dout) / np.float32(1 - p), 0))
    grandom.manual_seed(7)
    again = nn.Dropout(p)(x)
    np.testing.assert_array_equal(backend.to_cpu(again), backend.to_cpu(y))  # same seed, same mask
    assert not np.array_equal(backend.to_cpu(nn.Dropout(p)(x)), backend.to_cpu(y))  # the stream moves on
    layer.eval()
    assert layer(x) is x


# ---- module contract ---------------------------------------------------------

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.bn(self.conv1(x)))

    def backward(self, dout):
        return self.conv1.backward(self.bn.backward(self.head.backward(dout)))


def test_state_dict_keys_follow_pytorch_naming():
    net = _Net()
    assert list(net.state_dict()) == [
        "conv1.weight", "conv1.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked", "head.1.weight", "head.1.bias"]
    assert [name for name, _ in net.named_parameters()] == [
        "conv1.weight", "conv1.bias", "bn.weight", "bn.bias", "head.1.weight", "head.1.bias"]
    res = nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 1)), projection=nn.Conv2d(2, 2, 1))
    assert list(res.state_dict()) == ["body.0.weight", "body.0.bias", "projection.weight", "projection.bias"]


def test_state_dict_is_a_copy_and_round_trips():
    grandom.manual_seed(0)
    a, b = _Net(), _Net()
    state = a.state_dict()
    a.conv1.weight.data += 1.0
    assert not np.array_equal(state["conv1.weight"], a.conv1.weight.data)
    b.load_state_dict(state)
    for key, value in b.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_load_state_dict_reports_every_bad_key_at_once():
    net = _Net()
    state = net.state_dict()
    del state["conv1.bias"]
    del state["bn.running_var"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["head.1.weight"] = np.zeros((3, 9), np.float32)
    state["bn.weight"] = np.array(["a", "b"])
    with pytest.raises(ValueError) as err:
        net.load_state_dict(state)
    message = str(err.value)
    for fragment in ("missing key 'conv1.bias'", "missing key 'bn.running_var'", "unexpected key 'extra.weight'",
                     "mis-shaped key 'head.1.weight'", "mis-typed key 'bn.weight'", "5 bad key(s)"):
        assert fragment in message
    before = net.conv1.weight.data.copy()
    state["conv1.weight"] = before + 1  # nothing is loaded when anything is wrong
    with pytest.raises(ValueError):
        net.load_state_dict(state)
    np.testing.assert_array_equal(net.conv1.weight.data, before)


def test_load_state_dict_non_strict_ignores_only_missing_and_unexpected():
    net = _Net()
    state = {"conv1.weight": np.ones((2, 1, 3, 3)), "other": np.zeros(1)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert "conv1.bias" in missing and unexpected == ["other"]
    assert net.conv1.weight.data.dtype == np.float32 and net.conv1.weight.data.sum() == 18
    with pytest.raises(ValueError, match="mis-shaped key 'conv1.weight'"):
        net.load_state_dict({"conv1.weight": np.ones(3)}, strict=False)


def test_gradients_accumulate_until_zero_grad(rng):
    layer = nn.Linear(3, 2)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    dout = np.ones((4, 2), np.float32)
    assert layer.weight.grad is None
    layer(x)
    layer.backward(dout)
    first = layer.weight.grad.copy()
    layer(x)
    layer.backward(dout)
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-6)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None


def test_eval_and_no_grad_cache_nothing(rng):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 2))
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    net.eval()
    net(x)
    assert all(m._cache is None for _, m in net.named_modules())
    assert not any(m.training for _, m in net.named_modules())
    with pytest.raises(RuntimeError, match="no forward cache"):
        net.backward(np.ones((2, 2), np.float32))
    net.train()
    assert all(m.training for _, m in net.named_modules())
    with nn.no_grad():
        net(x)
    assert all(m._cache is None for _, m in net.named_modules())
    net(x)
    assert net[0]._cache is not None
    net.backward(np.ones((2, 2), np.float32))
    assert all(m._cache is None for _, m in net.named_modules())  # one forward, one backward


def test_parameters_are_deduplicated_and_ordered():
    shared = nn.Linear(2, 2)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(net.parameters()) == 2
    assert net.parameters()[0] is shared.weight


def test_float64_models_work_on_cpu(rng):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).double()
    y = net(rng.standard_normal((2, 1, 4, 4)))
    assert y.dtype == np.float64
    assert net.backward(np.ones_like(y)).dtype == np.float64


def test_default_dtype_is_float32():
    for layer in (nn.Conv2d(1, 2, 3), nn.Linear(2, 2), nn.BatchNorm2d(2)):
        assert all(p.data.dtype == np.float32 for p in layer.parameters())


# ---- initializers ------------------------------------------------------------

@pytest.mark.parametrize("fn,expected_std", [
    (lambda w: init.normal_(w), 0.01),
    (lambda w: init.xavier_normal_(w), math.sqrt(2 / (64 * 9 + 32 * 9))),
    (lambda w: init.xavier_uniform_(w), math.sqrt(6 / (64 * 9 + 32 * 9)) / math.sqrt(3)),
    (lambda w: init.kaiming_normal_(w, nonlinearity="relu"), math.sqrt(2 / (64 * 9))),
    (lambda w: init.kaiming_uniform_(w, nonlinearity="relu"), math.sqrt(2 / (64 * 9))),
    (lambda w: init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / (32 * 9))),
])
def test_initializer_spread(fn, expected_std):
    grandom.manual_seed(0)
    w = nn.Parameter(np.zeros((32, 64, 3, 3), np.float32))
    fn(w)
    assert abs(float(w.data.std()) / expected_std - 1) < 0.03
    assert abs(float(w.data.mean())) < 0.05 * expected_std


def test_default_init_is_pytorchs_uniform_bound():
    grandom.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3)
    bound = 1 / math.sqrt(16 * 9)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.95 * bound
    assert np.abs(conv.bias.data).max() <= bound
    lin = nn.Linear(100, 10)
    assert np.abs(lin.weight.data).max() <= 0.1


def test_same_seed_same_weights():
    grandom.manual_seed(5)
    a = _Net().state_dict()
    grandom.manual_seed(5)
    b = _Net().state_dict()
    grandom.manual_seed(6)
    c = _Net().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


# ---- GPU parity --------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("name,make,make_input", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_gpu_matches_cpu(name, make, make_input):
    grandom.manual_seed(0)
    cpu = make()
    x = make_input(np.random.default_rng(1)).astype(np.float32)
    dout_rng = np.random.default_rng(2)
    if isinstance(cpu, nn.Dropout):
        pytest.skip("dropout masks come from different generators on the two devices")
    gpu = make()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to_gpu()
    y_cpu = cpu(x)
    y_gpu = gpu(backend.to_gpu(x))
    np.testing.assert_allclose(backend.to_cpu(y_gpu), y_cpu, rtol=1e-4, atol=1e-5)
    dout = dout_rng.standard_normal(y_cpu.shape).astype(np.float32)
    dx_cpu = cpu.backward(dout)
    dx_gpu = gpu.backward(backend.to_gpu(dout))
    np.testing.assert_allclose(backend.to_cpu(dx_gpu), dx_cpu, rtol=1e-4, atol=1e-5)
    for (key, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters()):
        np.testing.assert_allclose(backend.to_cpu(p_gpu.grad), p_cpu.grad, rtol=1e-4, atol=1e-5, err_msg=key)
    for key, value in cpu.state_dict().items():
        np.testing.assert_allclose(backend.to_cpu(gpu.state_dict()[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.gpu
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_batchnorm_running_stats_and_eval_match_cpu(momentum, dtype):
    # The GPU batch norm runs fused kernels (gpucnn.fused_gpu): three training
    # batches (running statistics, cumulative average for momentum=None),
    # then eval mode, all against the CPU layer.
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}
    rng = np.random.default_rng(3)
    cpu = nn.BatchNorm2d(4, momentum=momentum).astype(dtype)
    cpu.weight.data[:] = rng.uniform(0.5, 1.5, 4)
    cpu.bias.data[:] = rng.standard_normal(4)
    gpu = nn.BatchNorm2d(4, momentum=momentum).astype(dtype)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to_gpu()
    for _ in range(3):
        x = (rng.standard_normal((5, 4, 3, 2)) * 2 + 1).astype(dtype)
        dout = rng.standard_normal(x.shape).astype(dtype)
        np.testing.assert_allclose(backend.to_cpu(gpu(backend.to_gpu(x))), cpu(x), **tol)
        np.testing.assert_allclose(backend.to_cpu(gpu.backward(backend.to_gpu(dout))), cpu.backward(dout), **tol)
    for key, value in cpu.state_dict().items():
        np.testing.assert_allclose(backend.to_cpu(gpu.state_dict()[key]), value, err_msg=key, **tol)
    np.testing.assert_allclose(backend.to_cpu(gpu.weight.grad), cpu.weight.grad, **tol)
    cpu.eval()
    gpu.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(dtype)
    np.testing.assert_allclose(backend.to_cpu(gpu(backend.to_gpu(x))), cpu(x), **tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("make,shape", [(lambda: nn.BatchNorm2d(3), (4, 3, 5, 7)),
                                        (lambda: nn.BatchNorm1d(3), (6, 3)),
                                        (lambda: nn.BatchNorm1d(3, momentum=None), (2, 3, 9))],
                         ids=["2d", "1d-2d-input", "1d-3d-input-cumulative"])
def test_batchnorm_numba_kernels_match_array_code(monkeypatch, make, shape, dtype, tol):
    # The CPU training path runs gpucnn/nn/norm_cpu.py (Numba, float64 sums);
    # the NumPy array code (kept for mixed dtypes) is the reference here.
    from gpucnn.nn import norm as norm_module

    def run():
        grandom.manual_seed(0)
        layer = make().astype(dtype)
        rng = np.random.default_rng(4)
        layer.weight.data[:] = rng.uniform(0.5, 1.5, 3)
        layer.bias.data[:] = rng.standard_normal(3)
        out = []
        for _ in range(3):
            x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
            x = x.transpose(1, 0, *range(2, x.ndim)).copy().transpose(1, 0, *range(2, x.ndim))  # non-contiguous
            out += [layer(x), layer.backward(rng.standard_normal(shape).astype(dtype))]
        out += [layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var]
        return out
    numba_path = run()
    monkeypatch.setitem(norm_module._IMPLEMENTATIONS, "cpu", norm_module._ARRAY_CODE)
    array_code = run()
    for i, (a, b) in enumerate(zip(numba_path, array_code)):
        assert a.dtype == dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"result {i}")


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_cpu_backward_of_another_dtype_runs_the_array_code(monkeypatch, relu):
    # norm_cpu saves x, not xhat; a float64 dout after a float32 forward goes to
    # the array code with xhat (and the fused ReLU's y) rebuilt from x.
    from gpucnn.nn import norm as norm_module

    def run():
        layer = nn.BatchNorm2d(4)
        layer.fused_relu = relu
        rng = np.random.default_rng(5)
        layer.weight.data[:] = rng.uniform(0.5, 1.5, 4)
        layer.bias.data[:] = rng.standard_normal(4)
        x = (rng.standard_normal((3, 4, 5, 6)) * 2 + 1).astype(np.float32)
        y = layer(x)
        dx = layer.backward(rng.standard_normal(x.shape))   # float64
        return y, dx, layer.weight.grad, layer.bias.grad
    kernels = run()
    monkeypatch.setitem(norm_module._IMPLEMENTATIONS, "cpu", norm_module._ARRAY_CODE)
    array_code = run()
    assert kernels[1].dtype == array_code[1].dtype == np.float64
    for i, (a, b) in enumerate(zip(kernels, array_code)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5, err_msg=f"result {i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_cpu_kernel_matches_array_code_at_every_thread_count(dtype):
    # gpucnn/nn/elementwise_cpu.py: the same formulas bit for bit (NaN, +-inf,
    # a non-contiguous input), also when a large array is split across threads.
    import numba
    from gpucnn.nn.activation import _ReLUArrayCode
    rng = np.random.default_rng(0)
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            for shape in ((3, 5, 4, 7), (64, 32, 16, 16)):
                x = rng.standard_normal(shape).astype(dtype).transpose(0, 2, 1, 3)
                x[0, 0, 0, :3] = [np.nan, -np.inf, np.inf]
                layer = nn.ReLU()
                y = layer(x)
                with np.errstate(invalid="ignore"):
                    y_ref, mask = _ReLUArrayCode.relu_forward(x)
                np.testing.assert_array_equal(y, y_ref)
                assert y.dtype == dtype and y.flags.c_contiguous
                dout = rng.standard_normal(x.shape).astype(dtype)
                np.testing.assert_array_equal(layer.backward(dout), _ReLUArrayCode.relu_backward(dout, mask))
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("blas_threads", [False, True], ids=["row-parts", "blas-threads"])
def test_cpu_parallel_matmul_matches_numpy_and_is_deterministic(blas_threads, monkeypatch):
    # Linear's CPU products (gpucnn.cpu_parallel.matmul): row parts across
    # threads or the BLAS's own threads, transposed views as operands, same
    # bits run to run.
    import numba
    from gpucnn import cpu_parallel
    monkeypatch.setattr(cpu_parallel, "BLAS_WORKERS_SLEEP", blas_threads)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 700)).astype(np.float32)
    b = rng.standard_normal((500, 700)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            for x, y in ((a, b.T), (a.T, a), (a[:1], b.T)):
                got = cpu_parallel.matmul(x, y)
                np.testing.assert_allclose(got, x.astype(np.float64) @ y, rtol=1e-4, atol=1e-3)
                np.testing.assert_array_equal(got, cpu_parallel.matmul(x, y))
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_backward_params_skips_only_the_first_layers_input_gradient(fused, monkeypatch):
    """Sequential.backward_params (what the trainer calls): the same parameter
    gradients as backward, without the first conv's backward-data."""
    from gpucnn.nn import conv as conv_module
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 9, 9)).astype(np.float32)
    dlogits = rng.standard_normal((3, 5)).astype(np.float32)

    def model():
        grandom.manual_seed(4)
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 5))
        return nn.fuse(m) if fused else m
    full, params_only = model(), model()
    full(x)
    full.backward(dlogits)
    calls = []
    ops = dict(conv_module._ConvNd.ops)
    bwd_data = ops[2][1]
    ops[2] = (ops[2][0], lambda *a, **k: calls.append(a[2]) or bwd_data(*a, **k), ops[2][2])
    monkeypatch.setattr(conv_module._ConvNd, "ops", ops)
    params_only(x)
    assert params_only.backward_params(dlogits) is None
    assert calls == [(3, 4, 9, 9)]   # the second conv's input gradient only (the first one: none)
    for (name, p), (_, q) in zip(full.named_parameters(), params_only.named_parameters()):
        if fused and name == "0.bias":   # the fused backward sums db in float64, conv_backward_bias does not
            np.testing.assert_allclose(q.grad, p.grad, rtol=1e-6, atol=1e-6)
        else:
            assert np.array_equal(p.grad, q.grad), name
