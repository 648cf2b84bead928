"""Export a gpucnn model to ONNX (the `onnx` package, gpucnn[export]).

    gpucnn.onnx.export(model, example_input, path, opset=17) -> onnx.ModelProto

Argument order as torch.onnx.export. The graph is the model's inference
(eval-mode) computation: BatchNorm uses its running statistics, Dropout is
the identity. One forward of `example_input` in eval mode (under no_grad; the
model's training flag is restored) gives each layer's input and output shape;
the batch axis is dynamic ("N") in the graph's input and output. The file is
written atomically and passes onnx.checker (full check, shape inference).

Converters: one function per layer class in CONVERTERS, found along the
layer's class hierarchy (so a subclass such as a synchronized batch norm uses
its base class's converter). A layer class gets one with

    @gpucnn.onnx.register(MyLayer)
    def _my_layer(graph, layer, x, path):   # x: name of the input tensor
        return graph.node("OnnxOp", [x, graph.const(path + ".weight", w)], path, attr=...)

A layer without a converter is a TypeError naming the layer and its path.

Note: `import onnx` below is the onnx package, not this module (absolute
imports; this file is gpucnn.onnx).
"""
import numpy as np

from . import backend, nn, serialization
from .functional import _args
from .nn.module import forward_hook, no_grad

DEFAULT_OPSET = 17
CONVERTERS = {}


def register(*layer_classes):
    """Decorator: the converter of these layer classes (see the module docstring)."""
    def decorate(fn):
        for cls in layer_classes:
            CONVERTERS[cls] = fn
        return fn
    return decorate


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("gpucnn.onnx needs the onnx package: pip install 'gpucnn[export]'") from exc
    return onnx


class Graph:
    """Nodes and initializers of the graph being built; `shapes` maps id(layer)
    to the (input shape, output shape) of its first call in the example forward."""

    def __init__(self, onnx, opset, shapes):
        self.onnx, self.opset, self.shapes = onnx, opset, shapes
        self.nodes, self.initializers, self._used = [], [], set()

    def _name(self, base):
        base = base or "t"
        name, n = base, 1
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._used.add(name)
        return name

    def const(self, base, array):
        """An initializer holding `array` (host copy) -> its name."""
        name = self._name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(backend.to_cpu(array)), name))
        return name

    def node(self, op, inputs, base, output=None, **attrs):
        """Append an `op` node -> the name of its output."""
        out = output or self._name(f"{base}.{op}" if base else op)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=self._name(f"node:{out}"),
                                                     **attrs))
        return out

    def in_shape(self, layer):
        return self.shapes[id(layer)][0]

    def out_shape(self, layer):
        return self.shapes[id(layer)][1]

    def convert(self, layer, x, path):
        """The output name of `layer` applied to tensor `x`."""
        for cls in type(layer).__mro__:
            if cls in CONVERTERS:
                return CONVERTERS[cls](self, layer, x, path or "model")
        raise TypeError(f"gpucnn.onnx.export: layer {path or 'model'!r} ({type(layer).__name__}) has no ONNX "
                        f"equivalent here; supported: {', '.join(sorted(c.__name__ for c in CONVERTERS))} "
                        f"(add one with gpucnn.onnx.register)")


def _sub(path, name):
    return f"{path}.{name}" if path and path != "model" else name


def _ntuple(value, n):
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * n


def _conv_pads(layer, kernel, dilation):
    """ONNX pads (all begins, then all ends) of a conv layer; 'same' puts the odd
    pixel at the end, as PyTorch does (the ops' own padding helper decides)."""
    begin, extra = _args.conv_padding(f"gpucnn.onnx.export ({type(layer).__name__})", layer.padding, len(kernel),
                                      kernel, _ntuple(layer.stride, len(kernel)), dilation, f"kernel_size={kernel}")
    return list(begin) + [b + e for b, e in zip(begin, extra)]


# ---- containers -------------------------------------------------------------
@register(nn.Sequential)
def _sequential(g, layer, x, path):
    for name, child in layer._modules.items():
        x = g.convert(child, x, _sub(path, name))
    return x


@register(nn.Residual)
def _residual(g, layer, x, path):
    y = g.convert(layer.body, x, _sub(path, "body"))
    shortcut = g.convert(layer.projection, x, _sub(path, "projection")) if layer._has_projection else x
    return g.node("Add", [y, shortcut], path)


# ---- layers with weights ----------------------------------------------------------
def _weight_and_bias(g, layer, x, path):
    inputs = [x, g.const(_sub(path, "weight"), layer.weight.data)]
    if layer.bias is not None:
        inputs.append(g.const(_sub(path, "bias"), layer.bias.data))
    return inputs


def _conv_attrs(layer):
    kernel = tuple(layer.kernel_size)
    dilation = _ntuple(getattr(layer, "dilation", 1), len(kernel))
    return {"kernel_shape": list(kernel), "strides": list(_ntuple(layer.stride, len(kernel))),
            "dilations": list(dilation), "group": int(getattr(layer, "groups", 1))}


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(g, layer, x, path):
    attrs = _conv_attrs(layer)
    return g.node("Conv", _weight_and_bias(g, layer, x, path), path,
                  pads=_conv_pads(layer, tuple(layer.kernel_size), attrs["dilations"]), **attrs)


@register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(g, layer, x, path):
    # weight (C_in, K/groups, *kernel) is ONNX's layout too; explicit pads and
    # output_padding give PyTorch's output size (no output_shape attribute)
    return g.node("ConvTranspose", _weight_and_bias(g, layer, x, path), path,
                  pads=list(layer.padding) * 2, output_padding=list(layer.output_padding), **_conv_attrs(layer))


@register(nn.Linear)
def _linear(g, layer, x, path):
    return g.node("Gemm", _weight_and_bias(g, layer, x, path), path, transB=1)  # y = x W^T + b


@register(nn.BatchNorm1d, nn.BatchNorm2d)
def _batch_norm(g, layer, x, path):
    names = [g.const(_sub(path, key), value) for key, value in
             (("weight", layer.weight.data), ("bias", layer.bias.data),
              ("running_mean", layer.running_mean), ("running_var", layer.running_var))]
    return g.node("BatchNormalization", [x] + names, path, epsilon=layer.eps)


# ---- pooling ------------------------------------------------------------------
def _pool_attrs(layer):
    nd = len(layer.kernel_size)
    return {"kernel_shape": list(layer.kernel_size), "strides": list(_ntuple(layer.stride, nd)),
            "pads": list(_ntuple(layer.padding, nd)) * 2}


@register(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
def _max_pool(g, layer, x, path):
    dilation = list(_ntuple(getattr(layer, "dilation", 1), len(layer.kernel_size)))
    return g.node("MaxPool", [x], path, dilations=dilation, **_pool_attrs(layer))


@register(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _avg_pool(g, layer, x, path):
    include = int(bool(getattr(layer, "count_include_pad", True)))  # gpucnn's pools include the padding
    return g.node("AveragePool", [x], path, count_include_pad=include, **_pool_attrs(layer))


def _adaptive_pool(g, layer, x, path, op):
    """ONNX has no adaptive pool. Output 1 everywhere is Global<op>Pool; an input
    size divisible by the output size gives equal, disjoint windows, i.e. a
    plain <op>Pool with kernel = stride = in/out. The sizes are those of the
    example input (the graph's spatial sizes are static)."""
    size, out = g.in_shape(layer)[2:], g.out_shape(layer)[2:]
    if all(o == 1 for o in out):
        return g.node(f"Global{op}Pool", [x], path)
    if any(s % o for s, o in zip(size, out)):
        raise ValueError(f"gpucnn.onnx.export: layer {path!r} ({type(layer).__name__}) pools spatial size "
                         f"{tuple(size)} to {tuple(out)}; ONNX has no adaptive pool, so each input size must be "
                         f"a multiple of its output size (or the output 1)")
    window = [s // o for s, o in zip(size, out)]
    return g.node(f"{op}Pool", [x], path, kernel_shape=window, strides=window, pads=[0] * (2 * len(size)))


@register(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
def _adaptive_avg_pool(g, layer, x, path):
    return _adaptive_pool(g, layer, x, path, "Average")


@register(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
def _adaptive_max_pool(g, layer, x, path):
    return _adaptive_pool(g, layer, x, path, "Max")


# ---- shape and elementwise layers ---------------------------------------------------
@register(nn.Flatten)
def _flatten(g, layer, x, path):
    # Reshape with 0 = "keep this input dimension": the batch axis stays dynamic
    shape = g.in_shape(layer)
    start, end = layer.start_dim % len(shape), layer.end_dim % len(shape)
    target = [0] * start + [-1] + [int(d) for d in shape[end + 1:]]
    return g.node("Reshape", [x, g.const(_sub(path, "shape"), np.array(target, np.int64))], path)


@register(nn.Maxout)
def _maxout(g, layer, x, path):
    shape = g.in_shape(layer)  # (N, C, *rest) -> (N, C/k, k, *rest) -> max over axis 2
    target = np.array([0, shape[1] // layer.k, layer.k] + [int(d) for d in shape[2:]], np.int64)
    groups = g.node("Reshape", [x, g.const(_sub(path, "shape"), target)], path)
    if g.opset >= 18:  # axes became an input in opset 18
        return g.node("ReduceMax", [groups, g.const(_sub(path, "axes"), np.array([2], np.int64))], path,
                      keepdims=0)
    return g.node("ReduceMax", [groups], path, axes=[2], keepdims=0)


@register(nn.ReLU)
def _relu(g, layer, x, path):
    return g.node("Relu", [x], path)


@register(nn.LeakyReLU)
def _leaky_relu(g, layer, x, path):
    return g.node("LeakyRelu", [x], path, alpha=layer.negative_slope)


@register(nn.ELU)
def _elu(g, layer, x, path):
    return g.node("Elu", [x], path, alpha=layer.alpha)


@register(nn.Sigmoid)
def _sigmoid(g, layer, x, path):
    return g.node("Sigmoid", [x], path)


@register(nn.Tanh)
def _tanh(g, layer, x, path):
    return g.node("Tanh", [x], path)


@register(nn.Dropout)
def _dropout(g, layer, x, path):
    return g.node("Identity", [x], path)  # eval mode: dropout is the identity


# ---- export -------------------------------------------------------------------------
def _trace_shapes(model, x):
    """One eval-mode forward -> ({id(layer): (in_shape, out_shape)}, output), flags restored."""
    shapes = {}

    def record(module, inp, out):
        shapes.setdefault(id(module), (tuple(inp.shape), tuple(out.shape)))

    was_training = [(m, m.training) for _, m in model.named_modules()]
    model.eval()
    try:
        with no_grad(), forward_hook(record):
            y = model(x)
    finally:
        for m, flag in was_training:
            object.__setattr__(m, "training", flag)
    return shapes, y


def export(model, example_input, path, opset=DEFAULT_OPSET, input_name="input", output_name="output"):
    """Write `model` as an ONNX file at `path` -> the onnx.ModelProto (see the module docstring).
    example_input: one batch (any batch size) of the input, NumPy/CuPy or any DLPack array."""
    onnx = _onnx()
    params = model.parameters()
    x = backend.asarray(example_input)
    if params:  # the model's dtype and device, as Trainer feeds it
        x = x.astype(params[0].data.dtype, copy=False)
        x = backend.to_gpu(x) if backend.is_gpu_array(params[0].data) else backend.to_cpu(x)
    if x.ndim < 2:
        raise ValueError(f"gpucnn.onnx.export: example_input must have a batch axis, got shape {tuple(x.shape)}")
    shapes, y = _trace_shapes(model, x)
    graph = Graph(onnx, int(opset), shapes)
    graph._used.update((input_name, output_name))
    out = graph.convert(model, input_name, "")
    graph.node("Identity", [out], "", output=output_name)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(x.dtype))
    inputs = [onnx.helper.make_tensor_value_info(input_name, elem, ["N"] + [int(d) for d in x.shape[1:]])]
    outputs = [onnx.helper.make_tensor_value_info(output_name, elem, ["N"] + [int(d) for d in y.shape[1:]])]
    proto = onnx.helper.make_model(onnx.helper.make_graph(graph.nodes, "gpucnn", inputs, outputs,
                                                          graph.initializers),
                                   opset_imports=[onnx.helper.make_opsetid("", int(opset))],
                                   producer_name="gpucnn")
    onnx.checker.check_model(proto, full_check=True)
    serialization.atomic_write_bytes(path, proto.SerializeToString())
    return proto
