"""GPU launchers for adaptive average/max pooling (kernels/adaptive_pool.cu),
1-D, 2-D and 3-D: every input runs as (planes = N*C, D, H, W) with unit
leading spatial axes. The max backward is max_pool's route kernel
(pool_gpu / pool3d_gpu.max_backward with no geometry).

Called by gpucnn.functional.pool after validation; the windows and rules are
in that module's docstring and at the top of adaptive_pool.cu.
Status: compiled and emulated, not yet run on a GPU.
"""
from .. import kernel_loader
from ._gpu_launch import BLOCK, check_plane, contiguous

ADAPTIVE_FILE = "adaptive_pool.cu"
KERNELS = {
    "adaptive_avg_pool_forward_v1": ADAPTIVE_FILE,
    "adaptive_max_pool_forward_v1": ADAPTIVE_FILE,
    "adaptive_avg_pool_backward_v1": ADAPTIVE_FILE,
}
_SIG = "l" + "i" * 6   # planes, D, H, W, Do, Ho, Wo


def _lift3(spatial):
    return (1,) * (3 - len(spatial)) + tuple(spatial)


def _launch(name, out, arrays, x_shape, out_spatial):
    if out.size == 0:
        return
    planes = x_shape[0] * x_shape[1]
    kernel = kernel_loader.get_typed_kernel(ADAPTIVE_FILE, name, arrays[0].dtype)
    kernel_loader.launch(kernel, kernel_loader.grid_1d(out.size, BLOCK), (BLOCK,), "p" * len(arrays) + _SIG,
                         arrays + (planes,) + _lift3(x_shape[2:]) + _lift3(out_spatial))


def adaptive_avg_forward(x, out):
    x = contiguous(x)
    y = kernel_loader.alloc_output(tuple(x.shape[:2]) + tuple(out), x.dtype)
    _launch("adaptive_avg_pool_forward_v1", y, (x, y), x.shape, out)
    return y


def adaptive_max_forward(x, out):
    check_plane("adaptive_max_pool", x.shape)
    x = contiguous(x)
    y = kernel_loader.alloc_output(tuple(x.shape[:2]) + tuple(out), x.dtype)
    argmax = kernel_loader.alloc_output(y.shape, "int32")
    _launch("adaptive_max_pool_forward_v1", y, (x, y, argmax), x.shape, out)
    return y, argmax


def adaptive_avg_backward(dy, x_shape):
    dy = contiguous(dy)
    dx = kernel_loader.alloc_output(tuple(x_shape), dy.dtype)
    _launch("adaptive_avg_pool_backward_v1", dx, (dy, dx), tuple(x_shape), dy.shape[2:])
    return dx
