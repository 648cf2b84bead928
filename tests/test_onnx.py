"""gpucnn.onnx.export: every zoo model and 1-D/2-D/3-D layer stacks (every layer type,
conv dilation/groups/'same', transposed convs, dilated and adaptive pools) pass onnx.checker and
onnxruntime (CPU) reproduces gpucnn's eval output (relative L2 error < 1e-5,
float32) at several batch sizes through one exported graph (dynamic batch axis)."""
import numpy as np
import pytest

import gpucnn
from gpucnn import models, nn
from gpucnn.nn.module import no_grad

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

BATCHES = (1, 3, 8)


def _randomize_batch_norm(model, rng):
    """Non-trivial running statistics and affine parameters, so eval-mode BN is tested."""
    for _, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean = rng.normal(size=c).astype(np.float32)
            m.running_var = rng.uniform(0.5, 2.0, size=c).astype(np.float32)
            m.weight.data = rng.uniform(0.5, 1.5, size=c).astype(np.float32)
            m.bias.data = rng.normal(size=c).astype(np.float32)
    return model


def _check_export(model, sample_shape, path, rng, opset=17):
    proto = gpucnn.onnx.export(model, rng.normal(size=(2,) + sample_shape).astype(np.float32), path, opset=opset)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == list(sample_shape)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    for n in BATCHES:
        x = rng.normal(size=(n,) + sample_shape).astype(np.float32)
        with no_grad():
            expected = model(x)
        got = session.run(None, {"input": x})[0]
        assert got.shape == expected.shape
        rel = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert rel < 1e-5, (n, rel)


@pytest.mark.parametrize("name", models.MODELS)
def test_zoo_models_match_onnxruntime(name, tmp_path, rng):
    model = _randomize_batch_norm(models.build(name, 1, 10, 8), rng)
    _check_export(model, (1, 8, 8), tmp_path / f"{name}.onnx", rng)


def test_zoo_model_rgb_32(tmp_path, rng):
    model = _randomize_batch_norm(models.build("resnet_small", 3, 10, 12), rng)
    _check_export(model, (3, 12, 12), tmp_path / "resnet.onnx", rng)


def test_1d_stack(tmp_path, rng):
    model = _randomize_batch_norm(nn.Sequential(
        nn.Conv1d(2, 6, 3, stride=2, padding=1), nn.BatchNorm1d(6), nn.LeakyReLU(0.1),
        nn.MaxPool1d(3, stride=2, padding=1), nn.Conv1d(6, 8, 2, bias=False), nn.ELU(0.7),
        nn.AvgPool1d(3, stride=1, padding=1), nn.Maxout(2), nn.Flatten(),
        nn.Linear(4 * 3, 10), nn.BatchNorm1d(10), nn.Sigmoid(), nn.Dropout(0.5), nn.Linear(10, 6), nn.Tanh(),
        nn.Linear(6, 8, bias=False), nn.Maxout(4)), rng)
    _check_export(model, (2, 13), tmp_path / "stack1d.onnx", rng)


def test_3d_stack(tmp_path, rng):
    model = _randomize_batch_norm(nn.Sequential(
        nn.Conv3d(1, 4, (3, 2, 3), stride=(1, 2, 1), padding=(1, 0, 1)), nn.ReLU(),
        nn.MaxPool3d(2, stride=1, padding=1), nn.Conv3d(4, 4, 1),
        nn.Residual(nn.Sequential(nn.Conv3d(4, 4, 3, padding=1), nn.Tanh())),
        nn.AvgPool3d((2, 3, 2), stride=2, padding=1), nn.Flatten(start_dim=2), nn.Flatten(), nn.Linear(4 * 4 * 2 * 4, 5)),
        rng)
    _check_export(model, (1, 5, 7, 6), tmp_path / "stack3d.onnx", rng)


# one stack per dimensionality with every conv feature and the adaptive pools:
# 'same' with an odd total padding (the extra pixel at the end), dilation, groups,
# transposed convs with output_padding, dilated max pools, adaptive pools that
# are global, divisible (kernel = stride = in/out) or keep an axis (None)
NEW_LAYER_STACKS = {
    "1d": (lambda: nn.Sequential(
        nn.Conv1d(4, 6, 4, padding="same", groups=2), nn.Conv1d(6, 6, 3, padding="same", dilation=3, groups=3),
        nn.ReLU(), nn.ConvTranspose1d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2),
        nn.MaxPool1d(3, stride=2, padding=1, dilation=2), nn.AdaptiveMaxPool1d(5), nn.Tanh(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten()), (4, 10)),
    "2d": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, (2, 3), padding="same", dilation=(3, 1)), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=4),
        nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2),
        nn.MaxPool2d((2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)), nn.AdaptiveAvgPool2d((5, None)),
        nn.ELU(), nn.AdaptiveMaxPool2d((1, 2)), nn.Flatten(), nn.Linear(12, 5)), (2, 9, 7)),
    "3d": (lambda: nn.Sequential(
        nn.ConvTranspose3d(2, 4, (2, 3, 2), stride=2, padding=(0, 1, 1), dilation=(1, 2, 1)), nn.LeakyReLU(0.2),
        nn.Conv3d(4, 4, 3, padding="same", dilation=2, groups=2), nn.MaxPool3d(3, stride=2, padding=1, dilation=2),
        nn.AdaptiveMaxPool3d((None, 2, 1)), nn.AdaptiveAvgPool3d((1, 1, 1)), nn.Flatten()), (2, 3, 4, 5)),
}


@pytest.mark.parametrize("nd", NEW_LAYER_STACKS)
def test_stacks_with_conv_features_and_adaptive_pools(nd, tmp_path, rng):
    build, sample_shape = NEW_LAYER_STACKS[nd]
    _check_export(_randomize_batch_norm(build(), rng), sample_shape, tmp_path / f"new{nd}.onnx", rng)


def test_adaptive_pools_export_as_global_or_plain_pools(tmp_path, rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveMaxPool2d((2, 3)), nn.AdaptiveAvgPool2d(1))
    proto = gpucnn.onnx.export(model, rng.normal(size=(1, 1, 8, 6)).astype(np.float32), tmp_path / "a.onnx")
    pool = next(n for n in proto.graph.node if n.op_type == "MaxPool")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    assert attrs["kernel_shape"] == [4, 2] and attrs["strides"] == [4, 2] and attrs["pads"] == [0, 0, 0, 0]
    assert [n.op_type for n in proto.graph.node][-2:] == ["GlobalAveragePool", "Identity"]


@pytest.mark.parametrize("layer", [nn.AdaptiveAvgPool2d((3, 2)), nn.AdaptiveMaxPool1d(3)])
def test_adaptive_pool_with_uneven_windows_is_refused(layer, tmp_path):
    shape = (1, 2, 8, 8) if isinstance(layer, nn.AdaptiveAvgPool2d) else (1, 2, 8)
    model = nn.Sequential(nn.ReLU(), layer)
    with pytest.raises(ValueError, match=rf"'1' \({type(layer).__name__}\) pools spatial size .*8.* to .*3"):
        gpucnn.onnx.export(model, np.zeros(shape, np.float32), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_maxout_with_opset_18(tmp_path, rng):
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.Maxout(3), nn.Flatten(), nn.Linear(2 * 4 * 4, 4))
    _check_export(model, (1, 6, 6), tmp_path / "maxout18.onnx", rng, opset=18)


def test_layer_without_equivalent_is_named(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Conv2d(1, 2, 3), Custom(), nn.Flatten())
    with pytest.raises(TypeError, match=r"'1' \(Custom\) has no ONNX equivalent"):
        gpucnn.onnx.export(model, np.zeros((1, 1, 5, 5), np.float32), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_avg_pool_count_include_pad_attribute_and_modes_restored(tmp_path, rng):
    pool = nn.AvgPool2d(3, stride=1, padding=1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), pool, nn.Dropout(0.3))
    model.train()
    proto = gpucnn.onnx.export(model, rng.normal(size=(1, 1, 6, 6)).astype(np.float32), tmp_path / "a.onnx")
    node = next(n for n in proto.graph.node if n.op_type == "AveragePool")
    assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "count_include_pad")) == 1
    assert all(m.training for _, m in model.named_modules())  # the example forward left the modes alone
    pool.count_include_pad = False  # a layer that excludes padding is exported as such
    proto = gpucnn.onnx.export(model, rng.normal(size=(1, 1, 6, 6)).astype(np.float32), tmp_path / "b.onnx")
    node = next(n for n in proto.graph.node if n.op_type == "AveragePool")
    assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "count_include_pad")) == 0


def test_conv_dilation_groups_and_same_padding_attributes():
    """The Conv converter alone exports dilation, groups and padding='same' as attributes
    (set by hand here; the stacks above check the numbers against onnxruntime)."""
    from gpucnn.onnx import Graph
    conv = nn.Conv2d(4, 4, (3, 4), padding=1)
    conv.dilation, conv.groups, conv.padding = (2, 1), 2, "same"
    graph = Graph(onnx, 17, {})
    graph.convert(conv, "x", "conv")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in graph.nodes[0].attribute}
    # 'same': total padding d*(k-1) per axis, the odd pixel at the end (as PyTorch)
    assert attrs["dilations"] == [2, 1] and attrs["group"] == 2 and attrs["pads"] == [2, 1, 2, 2]
    assert attrs["kernel_shape"] == [3, 4] and attrs["strides"] == [1, 1]
