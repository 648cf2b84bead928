"""GPU launchers for the 2-D convolution kernels (kernels/conv2d_*.cu); 1-D
convolutions run on the same kernels with unit height.

Called by gpucnn.functional.conv after validation (tuples already normalized);
the math is in that module's docstring and at the top of each .cu file.
Status: verified on an H100 (bench/results/gpu-h100-2026-11-24).

dtype: every kernel is written over `scalar_t` (kernels/common.cuh) and each
.cu file is compiled once per dtype with -DSCALAR=float or -DSCALAR=double
(kernel_loader.get_typed_kernel); the names stay plain extern "C" symbols. Sums run in the input
dtype. Kernel versions: 1 = one thread per output element, straight from the
formula; 2 = implicit GEMM with shared-memory tiles; 3 and 4 (every
direction) = implicit GEMM on tensor cores, 64x64 and 128x128 block tiles
(kernels/conv2d_tc.cu: TF32 for precision "high", BF16 for "medium", 3xTF32
for "highest"; float32 only; every direction takes dilation and groups (one
GEMM per group on grid z, the dilation in the tap table); backward-data one
GEMM per stride phase, backward-filter split-K with the ordered reduction;
compiled and emulated, not yet run on a GPU).
The v2 main loops do no integer division: the forward and backward-data
kernels take a tap table after their output (_tap_table, _gather_table,
built once per geometry and cached), backward-filter steps kk incrementally
(issue 10; compiled and emulated, not yet run on a GPU).
version=None picks by
shape, from timings on an H100 (_gpu_launch.resolve_version: v1 for
forward/backward-data with fewer than AUTO_V1_ROWS GEMM rows, else v2).

Dilation and groups (issue 16) are kernel arguments of every version: v1
sums over the group's channels, v2 runs one GEMM per group on grid z (its
rows the group's K/G filters, or C/G channels for backward-data), so a
depthwise conv (G = C) with version=None runs kernels/conv2d_depthwise.cu:
the forward stages each 16x16 output tile's input in shared memory
(conv2d_depthwise_forward_v1, when it fits; else v1), the backward-filter
gives each filter tap a block reducing over N*Ho*Wo
(conv2d_depthwise_backward_filter_v1); the backward-data has GEMM rows
C/G = 1 and runs v1, the direct kernel.
The dilation/groups paths are compiled and emulated, not yet run on a GPU.

Fused epilogues (issue 11; compiled and emulated, not yet run on a GPU):
forward(bias=b, relu=True) applies + b[k] and ReLU in the v1/v2 kernels'
stores (conv2d_forward_bias_relu_v2, ...); backward_data(relu_y=y) and
backward_filter(relu_y=y) mask dy by y > 0 as they load it, and
backward_filter(bias_grad=True) returns (dw, db) with db summed inside the
kernel (written after dw in one buffer; see conv2d_backward.cu). The
tensor-core versions and the depthwise kernels have no fused variant: there
the same epilogue runs as array code after (or before) the kernel.
"""
import functools
import math

import numpy as np

from .. import backend, kernel_loader
from ._args import output_shape
from ._gpu_launch import (BLOCK, TILE, TILE_K, as_2d, check_gemm_size, geometry_2d,
                          run_if_nonempty, select_version)

FORWARD_FILE = "conv2d_forward.cu"
BACKWARD_FILE = "conv2d_backward.cu"
DEPTHWISE_FILE = "conv2d_depthwise.cu"
TC_FILE = "conv2d_tc.cu"
VERSIONS = {"forward": (1, 2, 3, 4), "backward_data": (1, 2, 3, 4), "backward_filter": (1, 2, 3, 4)}
# Versions that run on tensor cores, with the rows (K) of their block tile:
# float32 only (float16 arrives as float32); dilation and groups in every
# direction; the precision picks the kernel. Compiled and emulated, not yet
# run on a GPU.
TENSOR_CORE = {3: 64, 4: 128}
SIMT_VERSIONS = {d: tuple(v for v in vs if v not in TENSOR_CORE) for d, vs in VERSIONS.items()}
TC_TILES = {3: (64, 64, 128), 4: (128, 128, 256)}   # (BM, BN, threads): kernels/conv2d_tc.cu
_TC_TAGS = {"highest": "3xtf32", "high": "tf32", "medium": "bf16"}
# TC_KERNELS[direction][version][precision]: the kernel name.
TC_KERNELS = {d: {v: {p: f"conv2d_{d}_{tag}_v{v}" for p, tag in _TC_TAGS.items()} for v in TENSOR_CORE}
              for d in VERSIONS}
TC_FORWARD = TC_KERNELS["forward"]

# Every kernel these launchers use, with its file (the tests check the names).
KERNELS = {
    "conv2d_forward_v1": FORWARD_FILE,
    "conv2d_forward_v2": FORWARD_FILE,
    "conv2d_backward_data_v1": BACKWARD_FILE,
    "conv2d_backward_data_v2": BACKWARD_FILE,
    "conv2d_backward_filter_v1": BACKWARD_FILE,
    "conv2d_backward_filter_v2": BACKWARD_FILE,
    "conv2d_backward_filter_reduce_v2": BACKWARD_FILE,
    "conv2d_depthwise_forward_v1": DEPTHWISE_FILE,
    "conv2d_depthwise_backward_filter_v1": DEPTHWISE_FILE,
    **{name: TC_FILE for by_v in TC_KERNELS.values() for names in by_v.values() for name in names.values()},
}
# The fused-epilogue variants of the SIMT kernels: (direction, bias, relu) per name.
FUSED = {("forward", True, False), ("forward", False, True), ("forward", True, True),
         ("backward_data", False, True),
         ("backward_filter", False, True), ("backward_filter", True, False), ("backward_filter", True, True)}


def fused_kernel(direction, version, bias=False, relu=False):
    """The name of a SIMT kernel with a fused bias and/or ReLU (the plain one without)."""
    return f"conv2d_{direction}{'_bias' if bias else ''}{'_relu' if relu else ''}_v{version}"


FUSED_KERNELS = {fused_kernel(d, v, b, r): FORWARD_FILE if d == "forward" else BACKWARD_FILE
                 for d, b, r in FUSED for v in SIMT_VERSIONS[d]}
KERNELS.update(FUSED_KERNELS)
FLOAT32_ONLY = frozenset(name for name, f in KERNELS.items() if f == TC_FILE)
DW_TILE, DW_IN = 16, 48   # conv2d_depthwise.cu's output tile and largest staged input tile


def depthwise_forward_fits(R, S, stride, dilation):
    """The staged input tile of conv2d_depthwise_forward_v1 fits its shared buffer."""
    return all((DW_TILE - 1) * s + d * (k - 1) + 1 <= DW_IN
               for k, s, d in zip((R, S), stride, dilation))

# backward_filter_v2 splits Kgemm = N*Ho*Wo into chunks until about this many
# blocks run, keeping at least MIN_SPLIT_STEPS TILE_K steps per chunk. The
# split depends on the shapes only, so dw is bitwise reproducible anywhere.
SPLIT_TARGET_BLOCKS = 512
MIN_SPLIT_STEPS = 8
# Geometry arguments after the three pointers, in kernel order:
# N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dil_h, dil_w, groups
_SIG = "ppp" + "i" * 16


def _plan(N, C, H, W, K, R, S, stride, padding, dilation, groups):
    Ho, Wo = output_shape((H, W), (R, S), stride, padding, dilation)
    return (N, C, H, W, K, R, S, Ho, Wo) + tuple(stride) + tuple(padding) + tuple(dilation) + (groups,)


def _select(op, direction, version, precision, dtype, gemm_rows, shapes, run, tc_rows=None):
    """select_version for this module's table (autotune keyed by op and shapes)."""
    return select_version(VERSIONS, direction, version, gemm_rows=gemm_rows, dtype=dtype, precision=precision,
                          tensor_core=TENSOR_CORE, shapes=shapes, run=run, tc_rows=tc_rows)


def _epilogue_array_code(y, bias, relu):
    """The fused epilogue's math, in place on y, for the kernels without one."""
    if bias is not None:
        y += bias.reshape((1, -1) + (1,) * (y.ndim - 2))
    if relu:
        y *= y > 0
    return y


def forward(x, w, stride, padding, dilation=None, groups=1, version=None, precision="highest",
            bias=None, relu=False):
    """y = conv(x, w) (+ bias[k], then ReLU, when asked): x (N, C, H, W) or
    (N, C, L), w (K, C/G, R, S) or (K, C/G, S), bias (K,) or None."""
    op = "conv2d_forward" if x.ndim == 4 else "conv1d_forward"
    v = _select(op, "forward", version, precision, x.dtype, w.shape[0] // groups,
                dict(x=x.shape, w=w.shape, s=stride, p=padding, d=dilation, g=groups),
                lambda v: forward(x, w, stride, padding, dilation, groups, v, precision))
    nd = x.ndim - 2
    stride, padding, dilation = geometry_2d(nd, (stride, 1), (padding, 0), (dilation or (1,) * nd, 1))
    x4, w4 = as_2d(x), as_2d(w)
    N, C, H, W = x4.shape
    K, _, R, S = w4.shape
    dims = _plan(N, C, H, W, K, R, S, stride, padding, dilation, groups)
    Ho, Wo = dims[7], dims[8]
    y = kernel_loader.alloc_output((N, K, Ho, Wo), x.dtype)
    depthwise = (version is None and groups > 1 and C == groups
                 and depthwise_forward_fits(R, S, stride, dilation))
    fused = bias is not None or relu
    if depthwise and run_if_nonempty(y, x4, w4):
        tiles = -(-Ho // DW_TILE) * -(-Wo // DW_TILE)
        kernel = kernel_loader.get_typed_kernel(DEPTHWISE_FILE, "conv2d_depthwise_forward_v1", x.dtype)
        kernel_loader.launch(kernel, (tiles, min(N * K, kernel_loader.MAX_GRID_Y)), (BLOCK,), _SIG,
                             (x4, w4, y) + dims)
        _epilogue_array_code(y, bias, relu)
    elif run_if_nonempty(y, x4, w4):
        if v in TENSOR_CORE:   # one GEMM per group on grid z; the dilation is in the taps
            Cg, Kpg, (dil_h, dil_w) = C // groups, K // groups, dilation
            check_gemm_size(op, Kpg, Cg * R * S, Ho * Wo,
                            Cg * H * W + (dil_h * (R - 1) + 1) * W)   # taps: 32-bit offsets
            check_groups_grid(op, groups)
            _check_tap_fields(op, "dilated kernel extent", dil_h * (R - 1), dil_w * (S - 1))
            bm, bn, threads = TC_TILES[v]
            grid = (kernel_loader.grid_1d(N * Ho * Wo, bn)[0], -(-Kpg // bm), groups)
            kernel = kernel_loader.get_typed_kernel(TC_FILE, TC_FORWARD[v][precision], x.dtype)
            kernel_loader.launch(kernel, grid, (threads,), "pppp" + _SIG[3:],
                                 (x4, w4, y, _tap_table(Cg, H, W, R, S, dil_h, dil_w, backend.cupy)) + dims)
            _epilogue_array_code(y, bias, relu)
            return y if nd == 2 else y.reshape(N, K, Wo)
        arrays = (x4, w4, y) if bias is None else (x4, w4, _contiguous_vector(bias), y)
        if v == 1:
            grid = kernel_loader.grid_1d(y.size, BLOCK)
        else:
            Cg, dil_h, dil_w = C // groups, dims[13], dims[14]
            check_gemm_size(op, K // groups, Cg * R * S, Ho * Wo,
                            Cg * H * W + dil_h * (R - 1) * W + dil_w * (S - 1))   # taps: 32-bit offsets
            _check_tap_fields(op, "dilated kernel extent", dil_h * (R - 1), dil_w * (S - 1))
            check_groups_grid(op, groups)
            grid = (kernel_loader.grid_1d(N * Ho * Wo, TILE)[0], -(-(K // groups) // TILE), groups)
            arrays += (_tap_table(Cg, H, W, R, S, dil_h, dil_w, backend.cupy),)
        kernel = kernel_loader.get_typed_kernel(FORWARD_FILE, fused_kernel("forward", v, bias is not None, relu),
                                                x.dtype)
        kernel_loader.launch(kernel, grid, (BLOCK,), "p" * len(arrays) + _SIG[3:], arrays + dims)
    elif fused and y.size:   # K*N*Ho*Wo > 0 but an empty sum (C = 0): y is zeros
        _epilogue_array_code(y, bias, relu)
    return y if nd == 2 else y.reshape(N, K, Wo)


def _contiguous_vector(a):
    return backend.cupy.ascontiguousarray(a).reshape(-1)


def backward_data(dy, w, x_shape, stride, padding, dilation=None, groups=1, version=None,
                  precision="highest", relu_y=None):
    """dx of shape x_shape from dy (N, K, Ho, Wo) and w (K, C/G, R, S) (or 1-D);
    with relu_y (the forward's output after ReLU, dy's shape), from dy * (relu_y > 0)."""
    op = "conv2d_backward_data" if dy.ndim == 4 else "conv1d_backward_data"
    v = _select(op, "backward_data", version, precision, dy.dtype, w.shape[1],
                dict(dy=dy.shape, w=w.shape, x=x_shape, s=stride, p=padding, d=dilation, g=groups),
                lambda v: backward_data(dy, w, x_shape, stride, padding, dilation, groups, v, precision))
    nd = dy.ndim - 2
    stride, padding, dilation = geometry_2d(nd, (stride, 1), (padding, 0), (dilation or (1,) * nd, 1))
    dy4, w4 = as_2d(dy), as_2d(w)
    N, C, H, W = (tuple(x_shape) if nd == 2 else tuple(x_shape[:2]) + (1, x_shape[2]))
    K, _, R, S = w4.shape
    dims = _plan(N, C, H, W, K, R, S, stride, padding, dilation, groups)
    dx = kernel_loader.alloc_output((N, C, H, W), dy.dtype)
    if run_if_nonempty(dx, dy4, w4):
        if v in TENSOR_CORE:   # no fused variant: the ReLU mask as array code
            _backward_data_tc(op, dy4 if relu_y is None else dy4 * (as_2d(relu_y) > 0), w4, dx, dims, v,
                              precision)
            return dx.reshape(tuple(x_shape))
        relu = relu_y is not None
        arrays = (dy4, w4, as_2d(relu_y), dx) if relu else (dy4, w4, dx)
        if v == 1:
            grid = kernel_loader.grid_1d(dx.size, BLOCK)
        else:
            Cg, Kpg, (Ho, Wo, sh, sw, _, _, dil_h, dil_w) = C // groups, K // groups, dims[7:15]
            check_gemm_size(op, Cg, Kpg * R * S, H * W, Kpg * Ho * Wo, Kpg * Cg * R * S)   # taps: 32-bit offsets
            _check_tap_fields(op, "dilated kernel extent", dil_h * (R - 1), dil_w * (S - 1))
            _check_tap_fields(op, "stride", sh, sw)
            check_groups_grid(op, groups)
            grid = (kernel_loader.grid_1d(N * H * W, TILE)[0], -(-Cg // TILE), groups)
            arrays += (_gather_table(Kpg, Cg, R, S, Ho, Wo, sh, sw, dil_h, dil_w, backend.cupy),)
        kernel = kernel_loader.get_typed_kernel(BACKWARD_FILE, fused_kernel("backward_data", v, relu=relu),
                                                dy.dtype)
        kernel_loader.launch(kernel, grid, (BLOCK,), "p" * len(arrays) + _SIG[3:], arrays + dims)
    return dx.reshape(tuple(x_shape))


def _check_tap_fields(op, what, *values):
    """The tap tables hold two 16-bit fields (kernels/common.cuh, Tap)."""
    if max(values) >= 1 << 16:
        raise ValueError(f"{op}: {what} {values} too large for the GPU kernel's tap table")


def _phase_axis(phase, R, stride, pad, dil, H):
    """One axis of backward-data's output phase `phase` (kernels/conv2d_tc.cu,
    tc_phase): (r0, taps, step, shift, count): the filter taps r = r0 + t*step
    < R (t < taps) with r*dil = phase (mod stride), the dy rows between
    consecutive taps, and the number of dx positions h with h + pad = phase
    (mod stride)."""
    step = stride // math.gcd(stride, dil)
    r0 = next((r for r in range(min(R, step)) if r * dil % stride == phase), None)
    taps = 0 if r0 is None else (R - 1 - r0) // step + 1
    first = (phase - pad) % stride
    count = (H - 1 - first) // stride + 1 if first < H else 0
    return r0, taps, step, dil // math.gcd(stride, dil), count


@functools.lru_cache(maxsize=64)
def _phase_tables(K, R, S, Ho, Wo, sh, sw, dil_h, dil_w, groups, xp):
    """Backward-data's phase decomposition: ((a, b, koff, (r0, Rp, step_h),
    (s0, Sp, step_w)), ...) for every phase (a, b), koff its first kk column,
    and the packed taps, one int64 per kk of every phase in turn (phase (a, b):
    kk = (k*Rp + tr)*Sp + ts over the group's K/G filters, tap (r, s) =
    (r0 + tr*step_h, s0 + ts*step_w)): (k*Ho*Wo + dh*Wo + dw) << 32 | dh << 16 | dw
    with (dh, dw) = ((Rp-1-tr)*shift_h, (Sp-1-ts)*shift_w). xp keys the cache
    (the tests swap in an emulator)."""
    Kpg = K // groups
    taps, phases, koff = [], [], 0
    for a in range(sh):
        r0, rp, step_h, shift_h, _ = _phase_axis(a, R, sh, 0, dil_h, 1)
        for b in range(sw):
            s0, sp, step_w, shift_w, _ = _phase_axis(b, S, sw, 0, dil_w, 1)
            k, tr, ts = (g.ravel() for g in np.meshgrid(np.arange(Kpg), np.arange(rp), np.arange(sp),
                                                        indexing="ij"))
            dh, dw = (rp - 1 - tr) * shift_h, (sp - 1 - ts) * shift_w
            taps.append(_pack_taps(k * Ho * Wo + dh * Wo + dw, dh, dw))
            phases.append((a, b, koff, (r0, rp, step_h), (s0, sp, step_w)))
            koff += k.size
    return tuple(phases), backend.to_gpu(np.concatenate(taps).astype(np.int64))


def _rotated_filter(w4, groups, phases):
    """wt (C x K/G*R*S): row c holds, phase block after phase block, the taps
    w[g*K/G + k, c - g*C/G, r, s] of c's group g in the phase's kk order
    (strided slices of w, one copy per phase)."""
    K, Cg, R, S = w4.shape
    Kpg = K // groups
    wt = kernel_loader.alloc_output((Cg * groups, Kpg * R * S), w4.dtype)
    w5 = w4.reshape(groups, Kpg, Cg, R, S)
    for _, _, koff, (r0, rp, step_h), (s0, sp, step_w) in phases:
        if rp and sp:   # (G, Cg, Kpg, Rp, Sp) -> (C, Kpg*Rp*Sp)
            block = w5[:, :, :, r0::step_h, s0::step_w].transpose(0, 2, 1, 3, 4)
            wt[:, koff:koff + Kpg * rp * sp] = block.reshape(Cg * groups, Kpg * rp * sp)
    return wt


def _backward_data_tc(op, dy4, w4, dx, dims, v, precision):
    """Backward-data on tensor cores: one implicit GEMM per output phase
    (stride residue class of dx positions) over only the taps that hit it,
    one group per grid z."""
    N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dil_h, dil_w, groups = dims
    Cg = C // groups
    check_gemm_size(op, Cg, K // groups * R * S, H * W, K * Ho * Wo + (dil_h * (R - 1) + 1) * Wo)
    check_groups_grid(op, groups)
    _check_tap_fields(op, "dilated kernel extent", dil_h * (R - 1), dil_w * (S - 1))
    phases, taps = _phase_tables(K, R, S, Ho, Wo, sh, sw, dil_h, dil_w, groups, backend.cupy)
    wt = _rotated_filter(w4, groups, phases)
    bm, bn, threads = TC_TILES[v]
    kernel = kernel_loader.get_typed_kernel(TC_FILE, TC_KERNELS["backward_data"][v][precision], dx.dtype)
    for a, b, koff, _, _ in phases:
        cols = N * _phase_axis(a, R, sh, ph, dil_h, H)[4] * _phase_axis(b, S, sw, pw, dil_w, W)[4]
        if cols:   # a phase with no taps still runs: it writes its zeros
            kernel_loader.launch(kernel, (kernel_loader.grid_1d(cols, bn)[0], -(-Cg // bm), groups),
                                 (threads,), "pppp" + "i" * 19, (dy4, wt, dx, taps) + tuple(dims) + (a, b, koff))


@functools.lru_cache(maxsize=64)
def _position_table(Ho, Wo, W, sh, sw, xp):
    """Backward-filter's table, one int64 per output position p = i*Wo + j:
    (i*sh*W + j*sw) << 32 | i*sh << 16 | j*sw (kernels/conv2d_tc.cu)."""
    p = np.arange(Ho * Wo, dtype=np.int64)
    i, j = p // Wo * sh, p % Wo * sw
    return backend.to_gpu(_pack_taps(i * W + j, i, j))


def _backward_filter_tc(op, dy4, x4, dw, dims, v, precision):
    """Backward-filter on tensor cores, deterministic: split-K over the
    (image, 16 output positions) tiles into a workspace, then the fixed-order
    reduction conv2d_backward_filter_reduce_v2; grid z = group*splits + chunk."""
    N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dil_h, dil_w, groups = dims
    Kpg, crs = K // groups, C // groups * R * S
    check_gemm_size(op, Kpg, crs, Ho * Wo, C * H * W)
    check_groups_grid(op, groups)
    _check_tap_fields(op, "strided output extent", (Ho - 1) * sh, (Wo - 1) * sw)
    bm, bn, threads = TC_TILES[v]
    tiles = N * -(-(Ho * Wo) // TILE_K)   # TILE_K = TC_BK: the kernel's k-tile
    splits, chunk = filter_split(Kpg, crs, tiles * TILE_K, groups)
    out = dw if splits == 1 else kernel_loader.alloc_output((splits,) + dw.shape, dw.dtype)
    kernel = kernel_loader.get_typed_kernel(TC_FILE, TC_KERNELS["backward_filter"][v][precision], dw.dtype)
    kernel_loader.launch(kernel, (-(-crs // bn), -(-Kpg // bm), splits * groups), (threads,), "pppp" + "i" * 17,
                         (dy4, x4, out, _position_table(Ho, Wo, W, sh, sw, backend.cupy)) + tuple(dims)
                         + (chunk // TILE_K,))
    if splits > 1:
        reduce = kernel_loader.get_typed_kernel(BACKWARD_FILE, "conv2d_backward_filter_reduce_v2", dw.dtype)
        kernel_loader.launch(reduce, kernel_loader.grid_1d(dw.size, BLOCK), (BLOCK,), "ppli",
                             (out, dw, dw.size, splits))


def _pack_taps(off, dh, dw):
    """Packed taps (kernels/common.cuh, Tap): off << 32 | dh << 16 | dw, off a
    signed 32-bit offset, dh and dw 16-bit unsigned (the launchers check the ranges)."""
    return (off.astype(np.int64) << 32) | (dh.astype(np.int64) << 16) | dw


@functools.lru_cache(maxsize=64)
def _tap_table(C, H, W, R, S, dil_h, dil_w, xp):
    """The forward's table (tensor-core v3/v4 and SIMT v2), one int64 per
    kk = (c*R + r)*S + s over C (a group's) channels: (c*H*W + r*dil_h*W +
    s*dil_w) << 32 | r*dil_h << 16 | s*dil_w (kernels/conv2d_tc.cu,
    conv2d_forward.cu), on the device of array module xp (in the key: the
    tests swap in an emulator)."""
    kk = np.arange(C * R * S, dtype=np.int64)
    c, dh, dw = kk // (R * S), kk // S % R * dil_h, kk % S * dil_w
    return backend.to_gpu(_pack_taps(c * H * W + dh * W + dw, dh, dw))


@functools.lru_cache(maxsize=64)
def _gather_table(Kpg, Cg, R, S, Ho, Wo, sh, sw, dil_h, dil_w, xp):
    """backward_data_v2's table (kernels/conv2d_backward.cu), two int64 per
    kk = (k*R + r)*S + s over one group's Kpg filters, the taps split by the
    stride, r*dil_h = rq*sh + rr and s*dil_w = sq*sw + sr:
        [2 kk]      (k*Ho*Wo - rq*Wo - sq) << 32 | rq << 16 | sq
        [2 kk + 1]  (k*Cg*R*S + r*S + s) << 32 | rr << 16 | sr."""
    kk = np.arange(Kpg * R * S, dtype=np.int64)
    k, r, s = kk // (R * S), kk // S % R, kk % S
    rq, rr = np.divmod(r * dil_h, sh)
    sq, sr = np.divmod(s * dil_w, sw)
    table = np.stack([_pack_taps(k * Ho * Wo - rq * Wo - sq, rq, sq),
                      _pack_taps(k * Cg * R * S + r * S + s, rr, sr)], axis=1)
    return backend.to_gpu(table.reshape(-1))


def filter_split(K, crs, kgemm, groups=1):
    """(splits, chunk) of backward_filter_v2 (K, crs per group): chunk is a
    multiple of TILE_K, splits = ceil(kgemm / chunk) so that no chunk is
    empty, groups*splits within grid z. Shapes only."""
    tiles = groups * -(-K // TILE) * -(-crs // TILE)
    steps = -(-kgemm // TILE_K)
    splits = min(-(-SPLIT_TARGET_BLOCKS // tiles), -(-steps // MIN_SPLIT_STEPS),
                 kernel_loader.MAX_GRID_Y // groups)
    splits = max(1, splits)
    chunk = -(-steps // splits) * TILE_K
    return -(-kgemm // chunk), chunk


def check_groups_grid(op, groups):
    if groups > kernel_loader.MAX_GRID_Y:
        raise ValueError(f"{op}: groups={groups} exceed the GPU kernel's grid limit")


def backward_filter(dy, x, w_shape, stride, padding, dilation=None, groups=1, version=None,
                    precision="highest", relu_y=None, bias_grad=False):
    """dw of shape w_shape from dy (N, K, Ho, Wo) and x (N, C, H, W) (or 1-D).
    Deterministic: no atomics, every sum in a fixed order. With relu_y (the
    forward's output after ReLU) dy * (relu_y > 0) stands for dy; with
    bias_grad, returns (dw, db), db the sum of that dy over (n, i, j)."""
    out = _backward_filter_into(dy, x, w_shape, stride, padding, dilation, groups, version, precision,
                                relu_y, bias_grad)
    db = out[out.size - w_shape[0]:] if bias_grad and out is not None else None
    if out is None:   # the depthwise kernel has no fused variant: the epilogue as array code
        dy = dy if relu_y is None else dy * (relu_y > 0)
        out = _backward_filter_into(dy, x, w_shape, stride, padding, dilation, groups, version, precision)
        db = dy.sum(axis=(0,) + tuple(range(2, dy.ndim))) if bias_grad else None
    dw = out[:int(np.prod(w_shape))].reshape(tuple(w_shape))
    return (dw, db) if bias_grad else dw


def backward(dy, x, w, stride, padding, relu_y=None, bias_grad=False, **kw):
    """(dx, dw, db) of a fused conv (F.conv2d_bias_relu_backward): both backward
    kernels with dy masked by relu_y > 0 as they load it; db (with bias_grad,
    else None) from the backward-filter kernel. kw: dilation, groups, version, precision."""
    out = backward_filter(dy, x, w.shape, stride, padding, relu_y=relu_y, bias_grad=bias_grad, **kw)
    dw, db = out if bias_grad else (out, None)
    return backward_data(dy, w, x.shape, stride, padding, relu_y=relu_y, **kw), dw, db


def _backward_filter_into(dy, x, w_shape, stride, padding, dilation, groups, version, precision,
                          relu_y=None, bias_grad=False):
    """The flat buffer [dw | db] (db only with bias_grad) the kernels filled,
    or None for a fusion the chosen kernel (depthwise) does not have."""
    fusion = relu_y is not None or bias_grad
    op = "conv2d_backward_filter" if x.ndim == 4 else "conv1d_backward_filter"
    nd = x.ndim - 2
    stride, padding, dilation = geometry_2d(nd, (stride, 1), (padding, 0), (dilation or (1,) * nd, 1))
    dy4, x4 = as_2d(dy), as_2d(x)
    N, C, H, W = x4.shape
    K, Cg, R, S = (tuple(w_shape) if nd == 2 else tuple(w_shape[:2]) + (1, w_shape[2]))
    dims = _plan(N, C, H, W, K, R, S, stride, padding, dilation, groups)
    Ho, Wo = dims[7], dims[8]
    depthwise = version is None and Cg == 1 and groups > 1
    if fusion and depthwise:
        return None
    count = K * Cg * R * S + (K if bias_grad else 0)   # [dw | db]
    flat = kernel_loader.alloc_output((count,), x.dtype)
    if not run_if_nonempty(flat, dy4, x4):
        return flat
    if depthwise:     # the per-tap reduction kernel
        kernel = kernel_loader.get_typed_kernel(DEPTHWISE_FILE, "conv2d_depthwise_backward_filter_v1", x.dtype)
        kernel_loader.launch(kernel, (min(flat.size, kernel_loader.MAX_GRID_Y),), (BLOCK,), _SIG,
                             (dy4, x4, flat) + dims)
        return flat
    relu = relu_y is not None
    inputs = (dy4, x4, as_2d(relu_y) if relu else dy4) if fusion else (dy4, x4)
    sig = "p" * (len(inputs) + 1) + _SIG[3:]
    v = _select(op, "backward_filter", version, precision, x.dtype, None,
                dict(dy=dy.shape, x=x.shape, w=w_shape, s=stride, p=padding, d=dilation, g=groups),
                lambda v: backward_filter(dy, x, w_shape, stride, padding, dilation, groups, v, precision),
                tc_rows=K // groups)
    if v in TENSOR_CORE:   # no fused variant: the mask and db as array code around the kernel
        if relu:
            dy4 = dy4 * (as_2d(relu_y) > 0)
        dw = flat[:K * Cg * R * S]
        _backward_filter_tc(op, dy4, x4, dw.reshape(K, Cg, R, S), dims, v, precision)
        if bias_grad:
            flat[K * Cg * R * S:] = dy4.sum(axis=(0, 2, 3))
        return flat
    name = fused_kernel("backward_filter", v, bias_grad, relu)
    if v == 1:
        kernel = kernel_loader.get_typed_kernel(BACKWARD_FILE, name, x.dtype)
        kernel_loader.launch(kernel, kernel_loader.grid_1d(flat.size, BLOCK), (BLOCK,), sig,
                             inputs + (flat,) + dims)
        return flat
    crs, Kpg = Cg * R * S, K // groups
    check_gemm_size(op, Kpg, crs, Ho * Wo)
    check_groups_grid(op, groups)
    splits, chunk = filter_split(Kpg, crs, N * Ho * Wo, groups)
    out = flat if splits == 1 else kernel_loader.alloc_output((splits, count), x.dtype)
    kernel = kernel_loader.get_typed_kernel(BACKWARD_FILE, name, x.dtype)
    kernel_loader.launch(kernel, (-(-crs // TILE), -(-Kpg // TILE), splits * groups), (BLOCK,), sig + "l",
                         inputs + (out,) + dims + (chunk,))
    if splits > 1:
        reduce = kernel_loader.get_typed_kernel(BACKWARD_FILE, "conv2d_backward_filter_reduce_v2", x.dtype)
        kernel_loader.launch(reduce, kernel_loader.grid_1d(count, BLOCK), (BLOCK,), "ppli",
                             (out, flat, count, splits))
    return flat
