"""gpucnn.save(..., format="safetensors") / gpucnn.load of .safetensors files:
round trips through the file, and through PyTorch (same architecture built in
torch, state dict moved both ways, equal outputs) where PyTorch is installed."""
import functools

import numpy as np
import pytest

import gpucnn
from gpucnn import models, nn
from gpucnn.nn.module import no_grad
from gpucnn.serialization import SerializationError

pytest.importorskip("safetensors")


def _trained_looking(model, rng):
    """Weights scaled randomly (keeping their initial magnitude), batch-norm statistics
    and counters away from their initial values (a fresh model's are too regular to test with)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, size=value.shape)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            value = rng.normal(scale=0.1, size=value.shape)
        elif value.dtype.kind == "f":
            value = value * rng.uniform(0.5, 1.5, size=value.shape)
        else:
            value = value + 7
        state[key] = value.astype(model.state_dict()[key].dtype)
    model.load_state_dict(state)
    return model


def _assert_close(got, expected):
    """float32 outputs of two implementations: within 1e-5 relative to the output's scale."""
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name", models.MODELS)
def test_state_dict_round_trip_through_the_file(name, tmp_path, rng):
    state = _trained_looking(models.build(name, 1, 10, 8), rng).state_dict()
    path = tmp_path / "weights.safetensors"
    gpucnn.save(state, path)  # the suffix picks the format
    assert path.read_bytes()[8:9] == b"{"
    back = gpucnn.load(path)
    assert list(back) == list(state)  # PyTorch's key names, in state_dict order
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        np.testing.assert_array_equal(back[key], value)


def test_explicit_format_and_errors(tmp_path):
    state = {"0.weight": np.ones((2, 3), np.float32), "1.num_batches_tracked": np.array(4, np.int64)}
    gpucnn.save(state, tmp_path / "w.bin", format="safetensors")
    assert gpucnn.load(tmp_path / "w.bin")["1.num_batches_tracked"] == 4
    gpucnn.save(state, tmp_path / "w.npz")  # default stays gpucnn's npz format
    assert gpucnn.load(tmp_path / "w.npz")["0.weight"].shape == (2, 3)
    with pytest.raises(TypeError, match="holds only arrays"):
        gpucnn.save({"model": state}, tmp_path / "nested.safetensors")
    with pytest.raises(ValueError, match="format must be"):
        gpucnn.save(state, tmp_path / "x", format="pickle")
    data = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) - 5])
    with pytest.raises(SerializationError, match="cut.safetensors"):
        gpucnn.load(tmp_path / "cut.safetensors")


# ---- PyTorch -----------------------------------------------------------------
def _torch_twin(module, torch):
    """The same architecture in torch.nn, with the same attribute names (so the same keys)."""
    tnn = torch.nn
    if isinstance(module, nn.Sequential):
        return tnn.Sequential(*(_torch_twin(m, torch) for m in module))
    if isinstance(module, nn.Residual):
        class Residual(tnn.Module):
            def __init__(self, body, projection):
                super().__init__()
                self.body = body
                if projection is not None:
                    self.projection = projection

            def forward(self, x):
                return self.body(x) + (self.projection(x) if hasattr(self, "projection") else x)
        proj = _torch_twin(module.projection, torch) if module._has_projection else None
        return Residual(_torch_twin(module.body, torch), proj)
    kind = getattr(tnn, type(module).__name__)  # gpucnn's layers carry PyTorch's names
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return kind(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, module.groups, bias=module.bias is not None)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return kind(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.output_padding, module.groups, module.bias is not None, module.dilation)
    if isinstance(module, nn.BatchNorm2d):
        return tnn.BatchNorm2d(module.num_features, module.eps, module.momentum)
    if isinstance(module, nn.Linear):
        return tnn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return kind(module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, nn.AvgPool2d):
        return tnn.AvgPool2d(module.kernel_size, module.stride, module.padding, count_include_pad=True)
    if type(module).__name__.startswith("Adaptive"):
        return kind(module.output_size)
    return kind()  # ReLU, Flatten, Dropout, ...


def _stack_with_new_layers(in_channels, num_classes, image_size):
    """Every conv feature and the adaptive pools, as a state-dict round trip sees them."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, (2, 3), padding="same", dilation=(2, 1), bias=False), nn.BatchNorm2d(4),
        nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2)),
        nn.MaxPool2d(3, stride=1, padding=1, dilation=2), nn.AdaptiveMaxPool2d((3, None)),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, num_classes))


BUILDERS = dict({name: functools.partial(models.build, name) for name in models.MODELS},
                new_layers=_stack_with_new_layers)


@pytest.mark.parametrize("name", BUILDERS)
def test_state_dict_moves_between_gpucnn_and_pytorch(name, tmp_path, rng):
    torch = pytest.importorskip("torch")
    import safetensors.torch
    ours = _trained_looking(BUILDERS[name](1, 10, 8), rng).eval()
    twin = _torch_twin(ours, torch).eval()
    x = rng.normal(size=(4, 1, 8, 8)).astype(np.float32)

    gpucnn.save(ours.state_dict(), tmp_path / "ours.safetensors")              # gpucnn -> PyTorch
    twin.load_state_dict(safetensors.torch.load_file(tmp_path / "ours.safetensors"), strict=True)
    with no_grad(), torch.no_grad():
        expected = ours(x)
        _assert_close(twin(torch.from_numpy(x)).numpy(), expected)

    with torch.no_grad():                                                      # PyTorch -> gpucnn
        for p in twin.parameters():
            p.mul_(0.5)
        theirs = twin(torch.from_numpy(x)).numpy()
    safetensors.torch.save_file(twin.state_dict(), tmp_path / "theirs.safetensors")
    fresh = BUILDERS[name](1, 10, 8)
    fresh.load_state_dict(gpucnn.load(tmp_path / "theirs.safetensors"), strict=True)
    with no_grad():
        _assert_close(fresh.eval()(x), theirs)
    for key, value in twin.state_dict().items():  # buffers too (num_batches_tracked: int64, 0-d)
        np.testing.assert_array_equal(fresh.state_dict()[key], value.numpy())
