"""2-D convolution with fused epilogues (issue 11): the bias and ReLU applied
as the forward writes its output, ReLU's backward and the bias gradient
folded into the backward convolutions.

Notation as in conv.py: x (N, C, H, W), w (K, C/G, R, S), b (K,) or None,
y (N, K, Ho, Wo).

    conv2d_bias_relu(x, w, b)             y  = relu(conv2d(x, w) + b)
                                          (relu=False: conv2d(x, w) + b, b=None: no bias)
    conv2d_bias_relu_backward(dy, y, x, w) -> (dx, dw, db)
        dz = dy * [y > 0]                 (relu=False: dz = dy)
        dx = conv2d_backward_data(dz, w), dw = conv2d_backward_filter(dz, x),
        db = sum of dz over (n, i, j)     (None when bias=False)

relu(v) = v * [v > 0] (NaN stays NaN, the derivative at 0 is 0), exactly
ReLU's; y is the output of the fused forward (after ReLU): y > 0 exactly
where the pre-activation is, so the backward needs no mask of its own.
Results equal the unfused ops (conv2d, then + b, then nn.ReLU): y bitwise
(the same arithmetic), dx and dw bitwise on the CPU (the same conv_cpu
calls on the same dz), db within float32 rounding (summed in another order).

GPU (conv_gpu): the SIMT kernels v1/v2 have fused variants (the forward's
epilogue in its store, the mask in the backward kernels' loads of dy, db in
the backward-filter kernel); the tensor-core and depthwise kernels run the
same math as array code around the plain kernel. Compiled and emulated, not
yet run on a GPU. CPU (conv_fused_cpu): conv_cpu plus one Numba pass each
way (the backward masks dy and sums db once for both convolutions). Arguments (stride, padding incl. "same"/"valid", dilation, groups,
version, precision, float16) and errors as conv2d's.
"""
from .. import backend
from . import _args
from ._dispatch import implementation, narrow, widen
from .conv import _crop, _kw, _pad_end

OP = "conv2d_bias_relu"


def conv2d_bias_relu(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, relu=True,
                     version=None, precision=None):
    """relu(conv2d(x, w) + b) in one pass over y (relu=False: conv2d(x, w, b))."""
    x, w, b = map(backend.dlpack_or_same, (x, w, b))
    xp, a = _args.conv_forward_args(OP, 2, x, w, b, stride, padding, dilation, groups)
    (x, w, b), half = widen(x, w, b)
    y = implementation("conv_fused", xp, 2).forward(_pad_end(xp, x, a.extra), w, a.stride, a.padding,
                                                    bias=b, relu=bool(relu),
                                                    **_kw(xp, OP, a, version, precision, 2, "forward"))
    return narrow(y, half)


def conv2d_bias_relu_backward(dy, y, x, w, stride=1, padding=0, dilation=1, groups=1, *, relu=True,
                              bias=True, version=None, precision=None):
    """(dx, dw, db) of y = conv2d_bias_relu(x, w, b, ...) given dy = dL/dy and
    that y (read only when relu). db is None when bias=False."""
    op = OP + "_backward"
    dy, y, x, w = map(backend.dlpack_or_same, (dy, y, x, w))
    mask = y if relu else None
    xp, a = _args.conv_backward_filter_args(op, 2, dy, x, w.shape, stride, padding, dilation, groups)
    _args.check_arrays(op, dy=dy, y=mask, x=x, w=w)
    if mask is not None and tuple(mask.shape) != tuple(dy.shape):
        raise ValueError(f"{op}: the forward's output y has shape {tuple(mask.shape)}, "
                         f"expected dy's {tuple(dy.shape)}")
    _args.conv_backward_data_args(op, 2, dy, w, x.shape, stride, padding, dilation, groups)
    _kw(xp, op, a, version, precision, 2, "backward_data")   # checks the version for both directions
    (dy, mask, x, w), half = widen(dy, mask, x, w)
    dx, dw, db = implementation("conv_fused", xp, 2).backward(
        dy, _pad_end(xp, x, a.extra), w, a.stride, a.padding, relu_y=mask, bias_grad=bool(bias),
        **_kw(xp, op, a, version, precision, 2, "backward_filter"))
    return tuple(None if r is None else narrow(r, half) for r in (_crop(xp, dx, x.shape), dw, db))
