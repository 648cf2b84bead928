"""Runs every GPU conv/pool kernel version once on a few small shapes, for
compute-sanitizer (memcheck, racecheck) and as a quick smoke test:

    compute-sanitizer --tool memcheck python -m gpucnn.devtools.sanitizer_driver

Outputs are NaN-poisoned before each launch; each result is compared with the
float64 reference (gpucnn.testing.reference). The 2-D and 1-D kernels run
through their launchers (every version, the tensor-core ones at each
precision, with and without dilation and groups); 3-D ops, when their GPU module
exists, through the functional front. Exit status: 0 all matched, 1 some
mismatch, 2 no usable GPU. Small shapes keep the sanitizer's slowdown bearable.
"""
import importlib
import sys

import numpy as np

from .. import backend, kernel_loader
from ..precision import FLOAT16_TOLERANCE, TOLERANCE as PRECISION_TOLERANCE
from ..testing import reference as ref

# (N, C, spatial, K, kernel, stride, padding[, dilation, groups]); 1-D, 2-D and 3-D cases
CONV_CASES = (
    (2, 3, (9, 7), 5, (3, 2), (1, 1), (1, 0)),
    (1, 4, (11, 10), 70, (3, 3), (2, 2), (1, 1)),   # K > one 64-row tile, stride 2
    (3, 2, (17,), 3, (4,), (3,), (2,)),
    (2, 2, (5, 6, 4), 3, (3, 2, 2), (1, 2, 1), (1, 0, 1)),
    (2, 4, (9, 8), 6, (3, 2), (2, 1), (2, 1), (2, 3), 2),   # dilation and groups, every version and direction
    (2, 4, (17,), 4, (3,), (2,), (2,), (3,), 2),            # the same in 1-D
)
# (N, C, spatial, kernel, stride, padding)
POOL_CASES = (
    (2, 3, (9, 8), (3, 3), (2, 2), (1, 1)),
    (1, 2, (7, 7), (2, 3), (2, 1), (0, 1)),
    (2, 2, (13,), (3,), (2,), (1,)),
    (1, 2, (5, 6, 4), (2, 2, 2), (2, 2, 2), (1, 0, 1)),
    (2, 3, (6, 12), (2, 2), (2, 2), (0, 0)),        # 2x2/2, W % 4 == 0: v2's 16-byte loads/stores
    (1, 2, (4, 10), (3, 3), (2, 2), (1, 1)),        # W = 10: v2's 8-byte path
)


def _rel_err(got, want):
    got = backend.to_cpu(got).astype(np.float64)
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return np.inf
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def _gpu_module(family, nd):
    from ..functional import _dispatch
    name = _dispatch._GPU_MODULES[(family, nd)]
    try:
        return importlib.import_module(f"gpucnn.functional.{name}")
    except ImportError:
        return None


def _versions(module, op):
    return tuple(getattr(module, "VERSIONS", {}).get(op, (None,)))


def run_all(log=print):
    """Run every case; returns the list of failure descriptions."""
    from .. import functional as F
    rng = np.random.default_rng(0)
    failures = []
    tol = {np.float32: 1e-4, np.float64: 1e-10, np.float16: FLOAT16_TOLERANCE}

    def check(label, got, want, dtype, tolerance=None):
        err = _rel_err(got, want)
        ok = err <= (tol[dtype] if tolerance is None else tolerance)
        log(f"{'ok  ' if ok else 'FAIL'} {label}: rel err {err:.2e}")
        if not ok:
            failures.append(f"{label}: rel err {err:.2e}")

    for dtype in (np.float32, np.float64):
        for N, C, sp, K, kern, st, pd, *dil_groups in CONV_CASES:
            nd = len(sp)
            dil, groups = (tuple(dil_groups) + (1, 1))[:2]
            geo = (st, pd, dil, groups)
            x = rng.standard_normal((N, C) + sp).astype(dtype)
            w = rng.standard_normal((K, C // groups) + kern).astype(dtype)
            y_ref = ref.conv_forward_ref(x, w, None, *geo)
            dy = rng.standard_normal(y_ref.shape).astype(dtype)
            dx_ref = ref.conv_backward_data_ref(dy, w, x.shape, *geo)
            dw_ref = ref.conv_backward_filter_ref(dy, x, w.shape, *geo)
            gx, gw, gdy = (backend.to_gpu(a) for a in (x, w, dy))
            mod = _gpu_module("conv", nd)
            fwd = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
            bd = {1: F.conv1d_backward_data, 2: F.conv2d_backward_data, 3: F.conv3d_backward_data}[nd]
            bf = {1: F.conv1d_backward_filter, 2: F.conv2d_backward_filter,
                  3: F.conv3d_backward_filter}[nd]
            if mod is None:
                log(f"skip conv{nd}d: no GPU module")
                continue
            tag = f"conv{nd}d {np.dtype(dtype).name} x{x.shape} w{w.shape} s{st} p{pd} d{dil} g{groups}"
            for v in _versions(mod, "forward"):
                if v in getattr(mod, "TENSOR_CORE", ()):   # float32 only, one kernel per precision
                    for p, p_tol in (PRECISION_TOLERANCE.items() if dtype is np.float32 else ()):
                        check(f"{tag} forward v{v} {p}", fwd(gx, gw, None, *geo, version=v, precision=p),
                              y_ref, dtype, p_tol)
                    continue
                check(f"{tag} forward v{v}", fwd(gx, gw, None, *geo, version=v), y_ref, dtype)
            for direction, call, expected in (
                    ("backward_data", lambda v, **p: bd(gdy, gw, x.shape, *geo, version=v, **p), dx_ref),
                    ("backward_filter", lambda v, **p: bf(gdy, gx, w.shape, *geo, version=v, **p), dw_ref)):
                for v in _versions(mod, direction):
                    if v in getattr(mod, "TENSOR_CORE", ()):   # as the forward: float32, each precision
                        for p, p_tol in (PRECISION_TOLERANCE.items() if dtype is np.float32 else ()):
                            check(f"{tag} {direction} v{v} {p}", call(v, precision=p), expected, dtype, p_tol)
                        continue
                    check(f"{tag} {direction} v{v}", call(v), expected, dtype)
            if nd == 2:   # the fused epilogues (bias + ReLU, the ReLU mask and db in the backward)
                b = rng.standard_normal(K).astype(dtype)
                y_f = np.maximum(y_ref + b.reshape(1, K, 1, 1), 0)
                dy_f = dy * (y_f > 0)
                want = (ref.conv_backward_data_ref(dy_f, w, x.shape, *geo),
                        ref.conv_backward_filter_ref(dy_f, x, w.shape, *geo), dy_f.sum(axis=(0, 2, 3)))
                gy_f = backend.to_gpu(y_f.astype(dtype))
                for v in (1, 2):
                    check(f"{tag} bias_relu forward v{v}",
                          F.conv2d_bias_relu(gx, gw, backend.to_gpu(b), *geo, version=v), y_f, dtype)
                    got = F.conv2d_bias_relu_backward(gdy, gy_f, gx, gw, *geo, version=v)
                    for name, g, e in zip(("dx", "dw", "db"), got, want):
                        check(f"{tag} bias_relu backward v{v} {name}", g, e, dtype)

    # float16 too: pool_gpu's v2 kernels read and write it (v1 and 3-D widen)
    for dtype in (np.float32, np.float64, np.float16):
        for N, C, sp, kern, st, pd in POOL_CASES:
            nd = len(sp)
            if _gpu_module("pool", nd) is None:
                log(f"skip pool{nd}d: no GPU module")
                continue
            # distinct values (exact in float16 too: fewer than 2048): no ties, so argmax is unambiguous
            x = rng.permutation(N * C * int(np.prod(sp))).reshape((N, C) + sp).astype(dtype)
            y_ref, a_ref = ref.max_pool_ref(x, kern, st, pd)
            dy = rng.standard_normal(y_ref.shape).astype(dtype)
            dx_ref = ref.max_pool_backward_ref(dy, a_ref, x.shape)
            gx, gdy = backend.to_gpu(x), backend.to_gpu(dy)
            tag = f"pool{nd}d {np.dtype(dtype).name} x{x.shape} k{kern} s{st} p{pd}"
            maxp = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
            maxb = {1: F.max_pool1d_backward, 2: F.max_pool2d_backward, 3: F.max_pool3d_backward}[nd]
            avgp = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
            avgb = {1: F.avg_pool1d_backward, 2: F.avg_pool2d_backward, 3: F.avg_pool3d_backward}[nd]
            mod = _gpu_module("pool", nd)
            for v in _versions(mod, "max_forward"):
                y, a = maxp(gx, kern, st, pd, version=v)
                check(f"{tag} max forward v{v}", y, y_ref, dtype)
                if not np.array_equal(backend.to_cpu(a), a_ref):
                    failures.append(f"{tag} max forward v{v}: argmax differs")
                    log(f"FAIL {tag} max forward v{v}: argmax differs")
            ga = backend.to_gpu(a_ref)
            for v in _versions(mod, "max_backward"):
                check(f"{tag} max backward v{v} (gather)",
                      maxb(gdy, ga, x.shape, kernel_size=kern, stride=st, padding=pd, version=v), dx_ref, dtype)
                check(f"{tag} max backward v{v} (route)", maxb(gdy, ga, x.shape, version=v), dx_ref, dtype)
            for v in _versions(mod, "avg_forward"):
                check(f"{tag} avg forward v{v}", avgp(gx, kern, st, pd, version=v),
                      ref.avg_pool_ref(x, kern, st, pd), dtype)
            for v in _versions(mod, "avg_backward"):
                check(f"{tag} avg backward v{v}", avgb(gdy, x.shape, kern, st, pd, version=v),
                      ref.avg_pool_backward_ref(dy, x.shape, kern, st, pd), dtype)
    backend.synchronize(backend.cupy)
    return failures


def main():
    if not backend.gpu_available():
        print(f"sanitizer_driver: no usable GPU: {backend.gpu_unavailable_reason()}", file=sys.stderr)
        return 2
    kernel_loader.POISON_OUTPUTS = True
    failures = run_all()
    print(f"sanitizer_driver: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
