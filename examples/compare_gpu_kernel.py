"""Run gpucnn's conv2d forward on the GPU (when one is usable) and compare it
with the float64 plain-loop reference gpucnn.testing.reference.conv_forward_ref.
Without a GPU it compares the CPU path instead and says why the GPU part was
skipped. (CI has no GPU; the kernels were verified on an H100, see
bench/results/gpu-h100-2026-11-24/; this script is a quick check on any GPU.)

    python examples/compare_gpu_kernel.py
    python examples/compare_gpu_kernel.py --batch 2 --channels 3 --filters 4 --size 9 --stride 2 --padding 1
"""
import argparse

import numpy as np

from gpucnn import backend
from gpucnn.functional import conv2d
from gpucnn.testing.reference import conv_forward_ref

# float32 accumulation over C*R*S products vs float64: relative error of a
# few float32 ulps times sqrt(terms) is expected; 1e-4 leaves ample margin.
RTOL, ATOL = 1e-4, 1e-4


def compare(name, y, ref):
    err = np.abs(y.astype(np.float64) - ref)
    ok = np.allclose(y, ref, rtol=RTOL, atol=ATOL) and not np.isnan(y).any()
    print(f"{name:4s}: output {y.shape}, max abs error {err.max():.3e}, "
          f"max rel error {(err / (np.abs(ref) + 1e-12)).max():.3e} -> {'OK' if ok else 'MISMATCH'}")
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--padding", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, args.channels, args.size, args.size)).astype(np.float32)
    w = rng.standard_normal((args.filters, args.channels, args.kernel, args.kernel)).astype(np.float32)
    b = rng.standard_normal(args.filters).astype(np.float32)
    ref = conv_forward_ref(x, w, b, args.stride, args.padding)

    results = {"cpu": compare("cpu", conv2d(x, w, b, args.stride, args.padding), ref)}
    if backend.gpu_available():
        y_gpu = conv2d(backend.to_gpu(x), backend.to_gpu(w), backend.to_gpu(b), args.stride, args.padding)
        results["gpu"] = compare("gpu", backend.to_cpu(y_gpu), ref)
        print("device:", backend.device_info().get("gpu_name", "?"))
    else:
        print(f"gpu : skipped ({backend.gpu_unavailable_reason()})")
    if not all(results.values()):
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
