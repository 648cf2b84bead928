"""Conv-feature layers (issue 16): Conv{1,2,3}d with dilation/groups/'same',
ConvTranspose{1,2,3}d, AdaptiveAvgPool/AdaptiveMaxPool{1,2,3}d and dilated
MaxPool: PyTorch's parameter shapes and state_dict keys and outputs (torch
where it imports), float64 gradient checks, summary counts, and the
mobilenet_small / resnet_small models training on the 8x8 digits."""
import json

import numpy as np
import pytest

from gpucnn import backend as B
from gpucnn import cli, models, nn
from gpucnn.gradcheck import gradcheck
from gpucnn.summary import summary

# (our layer, the torch layer's constructor name and arguments, input shape)
LAYERS = [
    ("Conv1d", (4, 6, 3), dict(stride=2, padding=2, dilation=2, groups=2), (2, 4, 11)),
    ("Conv2d", (4, 8, 3), dict(padding="same", dilation=2, groups=4), (2, 4, 7, 6)),
    ("Conv2d", (3, 6, (2, 3)), dict(padding="same", bias=False), (1, 3, 5, 6)),
    ("Conv2d", (4, 6, 3), dict(stride=2, padding="valid", groups=2), (2, 4, 9, 8)),
    ("Conv3d", (2, 4, 2), dict(padding=1, dilation=(1, 2, 1), groups=2), (1, 2, 4, 5, 4)),
    ("ConvTranspose1d", (4, 6, 3), dict(stride=2, padding=1, output_padding=1, groups=2), (2, 4, 5)),
    ("ConvTranspose2d", (4, 2, (3, 2)), dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                                             dilation=(1, 2), bias=False), (2, 4, 4, 3)),
    ("ConvTranspose3d", (2, 4, 2), dict(stride=2, groups=2), (1, 2, 3, 2, 3)),
    ("AdaptiveAvgPool1d", (3,), {}, (2, 3, 7)),
    ("AdaptiveAvgPool2d", ((2, 3),), {}, (2, 3, 7, 8)),
    ("AdaptiveAvgPool3d", (2,), {}, (1, 2, 3, 5, 4)),
    ("AdaptiveMaxPool1d", (4,), {}, (2, 3, 9)),
    ("AdaptiveMaxPool2d", ((3, None),), {}, (2, 3, 7, 5)),
    ("AdaptiveMaxPool3d", (2,), {}, (1, 2, 3, 5, 4)),
    ("MaxPool2d", (3,), dict(stride=1, padding=1, dilation=2), (2, 3, 7, 8)),
    ("MaxPool1d", (2,), dict(dilation=3), (2, 3, 11)),
]
IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(LAYERS)]


def _tie_free(shape, seed=0):
    """Distinct values in [-1, 1) (no max-pool ties; small, so that the
    numerical gradients' rounding noise stays far below the tolerance)."""
    size = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    return (rng.permutation(size).reshape(shape) * (2.0 / size) - 1.0).astype(np.float32)


@pytest.mark.parametrize("name, args, kw, shape", LAYERS, ids=IDS)
def test_layer_matches_torch_parameters_state_dict_and_output(name, args, kw, shape):
    torch = pytest.importorskip("torch")
    ours, theirs = getattr(nn, name)(*args, **kw), getattr(torch.nn, name)(*args, **kw)
    sd = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    mine = ours.state_dict()
    assert list(mine) == list(sd)
    assert all(mine[k].shape == sd[k].shape for k in sd)
    ours.load_state_dict(sd)
    x = _tie_free(shape)
    y = ours(x)
    np.testing.assert_allclose(y, theirs(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, args, kw, shape", LAYERS, ids=IDS)
def test_layer_gradients_float64(name, args, kw, shape):
    ok, report = gradcheck(getattr(nn, name)(*args, **kw), _tie_free(shape).astype(np.float64))
    assert ok, str(report)


def test_default_init_bounds_follow_pytorch_fan_in():
    """kaiming_uniform_(a=sqrt(5)): |w| <= 1/sqrt(weight.shape[1] * prod(kernel)), as PyTorch's."""
    for layer, fan_in in [(nn.Conv2d(8, 16, 3, groups=8), 1 * 9), (nn.ConvTranspose2d(4, 6, 3, groups=2), 3 * 9)]:
        bound = 1 / np.sqrt(fan_in)
        w = layer.weight.data
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
        assert np.abs(layer.bias.data).max() <= bound


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(6, 4, 3, groups=4), "groups=4 must be a positive int dividing in_channels=6"),
    (lambda: nn.Conv2d(3, 6, 3, stride=2, padding="same"), "padding='same' needs stride 1"),
    (lambda: nn.Conv2d(3, 6, 3, padding="full"), "padding must be"),
    (lambda: nn.ConvTranspose2d(3, 6, 3, stride=2, output_padding=2), "output_padding"),
    (lambda: nn.AdaptiveAvgPool2d(0), "output_size must be positive"),
])
def test_layer_argument_errors(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_summary_counts_groups_dilation_and_transposed_conv():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding="same", groups=4),       # depthwise x2
                          nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False),
                          nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2),
                          nn.AdaptiveAvgPool2d(1))
    s = summary(model, (4, 6, 6))
    rows = {r.name: r for r in s.rows}
    assert rows["0"].params == 8 * 1 * 9 + 8 and rows["0"].macs == 8 * 6 * 6 * 1 * 9
    assert rows["1"].params == 8 * 8 * 9 and rows["1"].macs == 8 * 6 * 6 * 8 * 9
    # each of the 8*6*6 inputs meets K/groups * 2*2 = 2*4 weights
    assert rows["2"].params == 8 * 2 * 4 + 4 and rows["2"].macs == 8 * 6 * 6 * 2 * 4
    assert rows["2"].output_shape == (1, 4, 12, 12) and rows["3"].output_shape == (1, 4, 1, 1)
    assert s.total_params == sum(p.data.size for p in model.parameters())


def test_models_use_depthwise_and_global_pooling():
    m = models.build("mobilenet_small", 1, 10, 28)
    depthwise = [l for _, l in m.named_modules() if isinstance(l, nn.Conv2d) and l.groups == l.in_channels > 1]
    assert len(depthwise) == 5
    r = models.build("resnet_small", 3, 10, 32)
    assert any(isinstance(l, nn.AdaptiveAvgPool2d) for _, l in r.named_modules())
    for name in ("mobilenet_small", "resnet_small"):   # any input size: the head is adaptive
        for size in (8, 28, 32):
            assert models.build(name, 1, 10, size)(np.zeros((2, 1, size, size), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["mobilenet_small", "resnet_small"])
def test_model_trains_on_digits(tmp_path, name):
    """2 epochs on the 8x8 digits: well above chance (10%)."""
    metrics = tmp_path / "m.json"
    rc = cli.main(["train", "--dataset", "digits", "--model", name, "--epochs", "2", "--batch-size", "32",
                   "--optimizer", "adam", "--lr", "0.01", "--val-split", "0", "--no-progress",
                   "--device", "cpu", "--metrics-out", str(metrics)])
    assert rc == 0
    acc = json.loads(metrics.read_text())["test_accuracy"]
    print(f"{name}: digits test accuracy after 2 epochs {acc:.4f}")
    assert acc > 0.6, acc


@pytest.mark.gpu
@pytest.mark.parametrize("name, args, kw, shape", LAYERS, ids=IDS)
def test_layer_gpu_matches_cpu(name, args, kw, shape):
    """Forward and backward of each layer on CuPy arrays equal the CPU's."""
    layer = getattr(nn, name)(*args, **kw)
    x = _tie_free(shape)
    y = layer(x)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(g)
    grads = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()
    layer.to_gpu()
    y_gpu = layer(B.to_gpu(x))
    dx_gpu = layer.backward(B.to_gpu(g))
    np.testing.assert_allclose(B.to_cpu(y_gpu), y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(B.to_cpu(dx_gpu), dx, rtol=1e-4, atol=1e-5)
    for p, ref in zip(layer.parameters(), grads):
        np.testing.assert_allclose(B.to_cpu(p.grad), ref, rtol=1e-4, atol=1e-4)
