"""Times every (case, op, kernel version) and its references side by side.

Ops: conv forward / backward-data / backward-filter on conv cases; max and
average pooling forward / backward on pool cases.

Per entry (one case and one op) the runner records, all measured in this
one process:
- ours: one timing per kernel version on the GPU (every version is first
  checked against our CPU path), or the CPU path itself on the CPU;
- references: our CPU path (GPU runs), PyTorch on the CPU (oneDNN, same
  thread count; CPU runs), PyTorch cuDNN with TF32 off and on (GPU runs);
- work: conv flops 2*N*K*C*R*S*Ho*Wo (suites.Case.conv_flops), pool bytes
  read and written once (below); GFLOP/s or GB/s from the median time;
- ratios: `vs_<ref>` = our median time / the reference's median time (below
  1 means we are faster); `of_matmul_ceiling` / `of_copy_ceiling` = our
  GFLOP/s or GB/s as a fraction of the measured machine ceiling.

Inputs are uniform in [-1, 1) (no zeros, no ties for max-pool). On the GPU
they are rotated (timing.rotating) when they fit in L2; on the CPU they are
not, and ours and PyTorch are called in turn (timing.time_cpu_interleaved)
so that load from other processes hits both alike. cuDNN runs with
cudnn.benchmark=True, its autotuning falling inside the warm-up.
The GPU paths of this module ran on an H100 (bench/results/gpu-h100-2026-11-24).
"""
import inspect
import math

import numpy as np

from .. import backend, precision
from .. import functional as F
from ..functional._dispatch import implementation
from . import ceilings, env
from .timing import rotating, rotation_count, time_cpu, time_cpu_interleaved, time_gpu

# op -> (case family, gpucnn function name pattern, arrays it reads)
OPS = {
    "conv_forward": ("conv", "conv{nd}d", ("x", "w")),
    "conv_backward_data": ("conv", "conv{nd}d_backward_data", ("dy", "w")),
    "conv_backward_filter": ("conv", "conv{nd}d_backward_filter", ("dy", "x")),
    "max_pool_forward": ("pool", "max_pool{nd}d", ("x",)),
    "max_pool_backward": ("pool", "max_pool{nd}d_backward", ("dy", "argmax")),
    "avg_pool_forward": ("pool", "avg_pool{nd}d", ("x",)),
    "avg_pool_backward": ("pool", "avg_pool{nd}d_backward", ("dy",)),
}
REFERENCES = ("cpu_path", "torch_cpu", "cudnn_tf32_off", "cudnn_tf32_on", "torch_bf16")
CHECK_TOLERANCE = 1e-3      # max |ours - ref| / max |ref| for float32 outputs
# The same check per conv precision (docs/precision.md): TF32 and BF16
# operands carry 2**-11 and 2**-8 relative rounding, a few times that in the
# worst element of a sum. Set from that bound, not yet from a GPU run.
CHECK_TOLERANCES = {"highest": CHECK_TOLERANCE, "high": 4e-3, "medium": 3e-2}
CPU_BASELINE_REPEATS = 3    # our CPU path inside a GPU run: few repeats ...
CPU_BASELINE_SECONDS = 2.0  # ... and a time budget per measurement


def gpucnn_function(op, nd):
    return getattr(F, OPS[op][1].format(nd=nd))


def work(op, case):
    """{'flops': ..., 'bytes': ...}: conv flops; pool bytes read + written once
    (float32 data, int32 argmax)."""
    if OPS[op][0] == "conv":
        return {"flops": case.conv_flops(), "bytes": None}
    x, y = math.prod(case.x_shape), math.prod(case.y_shape)
    elements = {"max_pool_forward": x + 2 * y,   # read x; write y and argmax
                "max_pool_backward": 2 * y + x,  # read dy and argmax; write dx
                "avg_pool_forward": x + y,
                "avg_pool_backward": y + x}[op]
    return {"flops": None, "bytes": 4 * elements}


def make_inputs(case, seed=0):
    """NumPy float32 inputs of a case: x, dy and (conv) w, uniform in [-1, 1)."""
    rng = np.random.default_rng(seed)
    shapes = {"x": case.x_shape, "dy": case.y_shape}
    if case.family == "conv":
        shapes["w"] = case.w_shape
    return {k: rng.uniform(-1.0, 1.0, size=s).astype(np.float32) for k, s in shapes.items()}


def ours_call(op, case, a, version=None, precision=None):
    """Zero-argument callable running our op on the arrays in `a` (NumPy or
    CuPy). `version` is passed only to functions that take one, `precision`
    only to the convolutions."""
    f = gpucnn_function(op, case.nd)
    kw = {"version": version} if version is not None else {}
    if precision is not None and OPS[op][0] == "conv":
        kw["precision"] = precision
    s, p, k = case.stride, case.padding, case.kernel
    if case.family == "conv":
        kw.update(dilation=case.dil, groups=case.groups)
    if op == "conv_forward":
        return lambda: f(a["x"], a["w"], None, s, p, **kw)
    if op == "conv_backward_data":
        return lambda: f(a["dy"], a["w"], case.x_shape, s, p, **kw)
    if op == "conv_backward_filter":
        return lambda: f(a["dy"], a["x"], case.w_shape, s, p, **kw)
    if op == "max_pool_backward":  # with the geometry, as the layers call it
        return lambda: f(a["dy"], a["argmax"], case.x_shape, kernel_size=k, stride=s, padding=p, **kw)
    if op == "avg_pool_backward":
        return lambda: f(a["dy"], case.x_shape, k, s, p, **kw)
    return lambda: f(a["x"], k, s, p, **kw)  # pool forwards


def with_argmax(op, case, a):
    """Add the argmax a max-pool backward reads (from our forward on a's device)."""
    if op == "max_pool_backward":
        a["argmax"] = gpucnn_function("max_pool_forward", case.nd)(
            a["x"], case.kernel, case.stride, case.padding)[1]
    return a


def torch_call(torch, op, case, t):
    """Zero-argument callable running PyTorch's op on the tensors in `t`.
    Pool backwards call the aten kernels directly (2-D and 3-D exist; 1-D is
    lifted to 2-D with unit height, as PyTorch itself does)."""
    aten, tf = torch.ops.aten, torch.nn.functional
    nd, s, p, k = case.nd, list(case.stride), list(case.padding), list(case.kernel)
    if op == "conv_forward":
        f = getattr(tf, f"conv{nd}d")
        return lambda: f(t["x"], t["w"], None, s, p, list(case.dil), case.groups)
    if op.startswith("conv_backward"):
        which = 0 if op == "conv_backward_data" else 1
        mask = [which == 0, which == 1, False]
        return lambda: aten.convolution_backward(t["dy"], t["x"], t["w"], None, s, p, list(case.dil),
                                                 False, [0] * nd, case.groups, mask)[which]
    if op == "max_pool_forward":
        f = getattr(tf, f"max_pool{nd}d")
        return lambda: f(t["x"], k, s, p, return_indices=True)
    if op == "avg_pool_forward":
        f = getattr(tf, f"avg_pool{nd}d")
        return lambda: f(t["x"], k, s, p, count_include_pad=True)
    x, dy = t["x"], t["dy"]
    if nd == 1:
        x, dy, k, s, p = x.unsqueeze(2), dy.unsqueeze(2), [1] + k, [1] + s, [0] + p
    d = len(k)
    if op == "max_pool_backward":
        idx = t["indices"].unsqueeze(2) if nd == 1 else t["indices"]
        f = getattr(aten, f"max_pool{d}d_with_indices_backward")
        return lambda: f(dy, x, k, s, p, [1] * d, False, idx)
    f = getattr(aten, f"avg_pool{d}d_backward")
    return lambda: f(dy, x, k, s, p, False, True, None)


def needed(op, for_torch=False):
    """Input arrays to put on the device for an op: what it reads, plus x
    (the argmax of a max-pool backward comes from x; PyTorch's backward ops
    take the input tensor too) and, for PyTorch's conv backward ops, w."""
    extra = {"x", "w"} if for_torch and OPS[op][0] == "conv" else {"x"}
    return (extra | set(OPS[op][2])) - {"argmax"}


def torch_inputs(torch, op, case, a_np, device):
    t = {k: torch.from_numpy(a_np[k]).to(device) for k in needed(op, for_torch=True)}
    if op == "max_pool_backward":
        f = getattr(torch.nn.functional, f"max_pool{case.nd}d")
        t["indices"] = f(t["x"], list(case.kernel), list(case.stride), list(case.padding),
                         return_indices=True)[1]
    return t


def compare(ours, ref, tolerance=CHECK_TOLERANCE):
    """Error of our output(s) against a reference: float outputs as max |diff|
    relative to max |ref|, index outputs (argmax) as a mismatch count."""
    ours = ours if isinstance(ours, tuple) else (ours,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    errs, mismatches = [0.0], 0
    for o, r in zip(ours, ref):
        o = backend.to_cpu(o)
        r = _as_numpy(r).reshape(o.shape)
        if np.issubdtype(o.dtype, np.integer):
            mismatches += int(np.count_nonzero(o != r))
        else:
            scale = max(float(np.max(np.abs(r), initial=0.0)), np.finfo(np.float32).tiny)
            errs.append(float(np.max(np.abs(o.astype(np.float64) - r), initial=0.0)) / scale)
    rel = float(np.max(errs))  # NaN if any output held a NaN
    ok = bool(math.isfinite(rel) and rel <= tolerance and mismatches == 0)
    return {"max_rel_err": rel if math.isfinite(rel) else None, "index_mismatches": mismatches,
            "ok": ok, "tolerance": tolerance}


def _as_numpy(r):
    if hasattr(r, "detach"):  # torch tensor
        return r.detach().cpu().numpy()
    return backend.to_cpu(r)


def _failure(exc):
    return f"{type(exc).__name__}: {exc}"


class Runner:
    """Runs cases x ops on one device; see the module docstring."""

    def __init__(self, device="auto", repeats=None, warmup=None, threads=None, use_torch=True,
                 cpu_baseline=True, max_seconds=None, log=print, precisions=("highest",)):
        self.device = backend.resolve_device(device)
        self.precisions = tuple(precision.check(p) for p in precisions) or ("highest",)
        gpu = self.device == "gpu"
        self.repeats = repeats if repeats is not None else (50 if gpu else 5)
        self.warmup = warmup if warmup is not None else (10 if gpu else 2)
        self.threads = env.usable_threads(threads or env.default_threads())
        self.max_seconds = max_seconds if max_seconds is not None else math.inf
        self.cpu_baseline = cpu_baseline and gpu
        self.log = log
        self.torch, self.torch_reason = env.import_torch() if use_torch else (None, "disabled (--no-torch)")
        if self.torch is not None and gpu and not self.torch.cuda.is_available():
            self.torch, self.torch_reason = None, "PyTorch has no usable CUDA device (CPU-only build?)"
        self.ceilings = {}  # measured in run()
        self.l2_bytes = 0
        if gpu:
            rt = backend.cupy.cuda.runtime
            self.l2_bytes = int(rt.deviceGetAttribute(rt.cudaDevAttrL2CacheSize,
                                                      backend.cupy.cuda.Device().id))
            if self.torch is not None:
                self.torch.backends.cudnn.benchmark = True

    def settings(self, suite, ops, small_ceilings):
        return {"suite": suite, "ops": list(ops), "device": self.device, "precisions": list(self.precisions),
                "repeats": self.repeats,
                "warmup": self.warmup, "threads": self.threads,
                "max_seconds": None if math.isinf(self.max_seconds) else self.max_seconds,
                "torch": self.torch is not None, "torch_skipped": self.torch_reason or None,
                "cpu_baseline": self.cpu_baseline, "l2_bytes": self.l2_bytes or None,
                "cudnn_benchmark": True if (self.torch is not None and self.device == "gpu") else None,
                "small_ceilings": small_ceilings}

    def run(self, cases, ops, suite="custom", small_ceilings=False):
        """The whole benchmark document (see schema.py)."""
        jobs = [(c, op) for c in cases for op in ops if OPS[op][0] == c.family]
        with env.cpu_threads(self.threads, self.torch):
            environment = env.environment(self.torch)
            self.log(f"measuring {self.device} ceilings ...")
            self.ceilings = ceilings.measure(self.device, small=small_ceilings)
            results = []
            for i, (case, op) in enumerate(jobs, 1):
                self.log(f"[{i}/{len(jobs)}] {case.name} {op}  ({case.describe()})")
                results.append(self.entry(case, op))
        return {"schema": "gpucnn-bench", "schema_version": 1,
                "settings": self.settings(suite, ops, small_ceilings),
                "environment": environment, "ceilings": self.ceilings,
                "results": results, "summary": summarize(results)}

    # -- one (case, op) ------------------------------------------------------
    def entry(self, case, op):
        a_np = make_inputs(case)
        out = {"case": case.name, "op": op, "geometry": case.as_dict(),
               "describe": case.describe(), "work": work(op, case), "baselines": {}, "versions": []}
        if self.device == "gpu":
            self._gpu_entry(case, op, a_np, out)
        else:
            self._cpu_entry(case, op, a_np, out)
        for v in out["versions"]:
            self._metrics(v, out)
        return out

    def _cpu_entry(self, case, op, a_np, out):
        """Our CPU path and PyTorch's CPU op, called in turn (a, b, a, b, ...)."""
        version = {"version": "cpu"}
        if case.family == "conv":   # the CPU computes every mode in float32: "highest"
            version["precision"] = "highest"
        out["versions"].append(version)
        try:
            fn = ours_call(op, case, with_argmax(op, case, dict(a_np)))
            ours = fn()
        except Exception as exc:  # record and go on with the suite
            version["skipped"] = _failure(exc)
            return
        tfn = None
        if self.torch is None:
            out["baselines"]["torch_cpu"] = {"skipped": self.torch_reason}
        else:
            try:
                tfn = torch_call(self.torch, op, case, torch_inputs(self.torch, op, case, a_np, "cpu"))
                version["check"] = dict(compare(ours, tfn()), reference="torch_cpu")
            except Exception as exc:
                out["baselines"]["torch_cpu"] = {"skipped": _failure(exc)}
                tfn = None
        fns = [fn] if tfn is None else [fn, tfn]
        timings = time_cpu_interleaved(fns, self.repeats, self.warmup, self.max_seconds)
        version["time"] = timings[0]
        if tfn is not None:
            out["baselines"]["torch_cpu"] = {"time": timings[1]}

    def _gpu_entry(self, case, op, a_np, out):
        cupy = backend.cupy
        cpu_out = None
        if self.cpu_baseline:
            try:
                fn = ours_call(op, case, with_argmax(op, case, dict(a_np)))
                cpu_out = fn()
                out["baselines"]["cpu_path"] = {"time": time_cpu(
                    fn, min(self.repeats, CPU_BASELINE_REPEATS), 1,
                    min(self.max_seconds, CPU_BASELINE_SECONDS))}
            except Exception as exc:
                out["baselines"]["cpu_path"] = {"skipped": _failure(exc)}
        else:
            out["baselines"]["cpu_path"] = {"skipped": "disabled (--no-cpu-baseline)"}
        reads = OPS[op][2]
        nbytes = sum(a_np[k].nbytes for k in reads if k in a_np)
        copies = rotation_count(nbytes, self.l2_bytes)
        try:
            versions = gpu_versions(op, case)
        except Exception as exc:  # e.g. the implementation module does not exist yet
            out["versions"].append({"version": "default", "skipped": _failure(exc)})
            versions = []
        for version, prec in self._version_precisions(case, versions):
            rec = {"version": "default" if version is None else str(version), "rotated_copies": copies}
            if prec is not None:
                rec["precision"] = prec
            out["versions"].append(rec)
            try:
                sets = [with_argmax(op, case, {k: cupy.asarray(a_np[k]) for k in needed(op)})
                        for _ in range(copies)]
                calls = [ours_call(op, case, s, version, prec) for s in sets]
                result = calls[0]()
                if cpu_out is not None:
                    rec["check"] = dict(compare(result, cpu_out, CHECK_TOLERANCES[prec or "highest"]),
                                        reference="cpu_path")
                rec["time"] = time_gpu(rotating(calls), self.repeats, self.warmup, self.max_seconds)
            except Exception as exc:
                rec["skipped"] = _failure(exc)
            finally:
                sets = calls = result = None
                cupy.get_default_memory_pool().free_all_blocks()
        self._cudnn(case, op, a_np, copies, out)

    def _version_precisions(self, case, versions):
        """(version, precision) pairs to time: pools get no precision; a conv's
        SIMT versions compute the same at every precision, so they run once as
        "highest"; its tensor-core versions (and the default, which the
        precision steers) run at each requested precision."""
        if case.family != "conv":
            return [(v, None) for v in versions]
        tensor_core = getattr(implementation("conv", backend.cupy, case.nd), "TENSOR_CORE", ())
        pairs = []
        for v in versions:
            steered = v is None or v in tensor_core
            pairs += [(v, p) for p in (self.precisions if steered else ("highest",))]
        return pairs

    def _cudnn(self, case, op, a_np, copies, out):
        torch = self.torch
        if torch is None:
            for key in ("cudnn_tf32_off", "cudnn_tf32_on"):
                out["baselines"][key] = {"skipped": self.torch_reason}
            return
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        try:
            sets = [torch_inputs(torch, op, case, a_np, "cuda") for _ in range(copies)]
            calls = [torch_call(torch, op, case, t) for t in sets]
            modes = (("cudnn_tf32_off", False), ("cudnn_tf32_on", True))
            if OPS[op][0] == "pool":  # TF32 only changes matmul-like math
                modes = modes[:1]
            for key, tf32 in modes:
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    out["baselines"][key] = {"time": time_gpu(_on_cupy_stream(torch, rotating(calls)),
                                                              self.repeats, self.warmup, self.max_seconds)}
                except Exception as exc:
                    out["baselines"][key] = {"skipped": _failure(exc)}
            if "medium" in self.precisions and OPS[op][0] == "conv":   # ours-medium's reference
                try:
                    bf16 = [torch_call(torch, op, case, {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                                         for k, v in t.items()}) for t in sets]
                    out["baselines"]["torch_bf16"] = {"time": time_gpu(
                        _on_cupy_stream(torch, rotating(bf16)), self.repeats, self.warmup, self.max_seconds)}
                except Exception as exc:
                    out["baselines"]["torch_bf16"] = {"skipped": _failure(exc)}
        except Exception as exc:
            out["baselines"].setdefault("cudnn_tf32_off", {"skipped": _failure(exc)})
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
            sets = calls = None
            torch.cuda.empty_cache()

    def _metrics(self, v, entry):
        if "time" not in v:
            return
        t = v["time"]["median_s"]
        w = entry["work"]
        v["gflops"] = w["flops"] / t / 1e9 if w["flops"] else None
        v["gbps"] = w["bytes"] / t / 1e9 if w["bytes"] else None
        ratios = {}
        for ref, b in entry["baselines"].items():
            if "time" in b:
                ratios[f"vs_{ref}"] = t / b["time"]["median_s"]
        c = self.ceilings
        if v["gflops"] and c.get("matmul_gflops"):
            ratios["of_matmul_ceiling"] = v["gflops"] / c["matmul_gflops"]
        if v["gbps"] and c.get("copy_gbps"):
            ratios["of_copy_ceiling"] = v["gbps"] / c["copy_gbps"]
        v["ratios"] = ratios


def _on_cupy_stream(torch, fn):
    """Run PyTorch on the stream CuPy's CUDA events are recorded on. Both
    default to the legacy default stream (pointer 0); a non-default CuPy
    stream is handed to PyTorch as an ExternalStream."""
    ptr = backend.cupy.cuda.get_current_stream().ptr
    if ptr == 0:
        return fn
    stream = torch.cuda.ExternalStream(ptr)

    def call():
        with torch.cuda.stream(stream):
            return fn()
    return call


def gpu_versions(op, case):
    """The kernel versions to time for an op: the implementation module's
    VERSIONS (a sequence, or a dict keyed by direction or by version), or
    [None] (the default) when the function takes no `version`."""
    if "version" not in inspect.signature(gpucnn_function(op, case.nd)).parameters:
        return [None]
    versions = getattr(implementation(case.family, backend.cupy, case.nd), "VERSIONS", None)
    if isinstance(versions, dict):
        direction = op.replace("conv_", "").replace("_pool", "")  # forward, backward_data, max_forward, ...
        versions = versions.get(direction, versions.get(op, list(versions)))
    return list(versions) if versions else [None]


def best_version(entry):
    timed = [v for v in entry["versions"] if "time" in v]
    return min(timed, key=lambda v: v["time"]["median_s"]) if timed else None


def geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(results):
    """Geometric means of each ratio over the entries (the best version of
    each), overall and per op: `geomean` from the ratios (median times);
    `geomean_min` the same `vs_<ref>` ratios from the fastest call of each
    side, which is less disturbed by other load on a shared machine."""
    best = [(e, best_version(e)) for e in results]
    best = [(e, v) for e, v in best if v is not None]
    median_ratios = [(e["op"], v.get("ratios", {})) for e, v in best]
    min_ratios = [(e["op"], {f"vs_{ref}": v["time"]["min_s"] / b["time"]["min_s"]
                             for ref, b in e["baselines"].items() if "time" in b})
                  for e, v in best]
    failed = [f"{e['case']} {e['op']} {v['version']}" for e in results for v in e["versions"]
              if v.get("check") and not v["check"]["ok"]]
    # a version record is always one of ours: "skipped" there means our call raised
    crashed = [f"{e['case']} {e['op']} {v['version']}: {v['skipped']}" for e in results for v in e["versions"]
               if "skipped" in v]
    return {"geomean": _geomeans(median_ratios), "geomean_min": _geomeans(min_ratios),
            "entries": len(results), "failed_checks": failed, "crashed": crashed}


def _geomeans(op_ratios):
    """{key: {all, count, by_op}} from [(op, {key: ratio})]."""
    out = {}
    for key in sorted({k for _, r in op_ratios for k in r}):
        pairs = [(op, r[key]) for op, r in op_ratios if key in r]
        by_op = {op: g for op in OPS if (g := geomean([x for o, x in pairs if o == op])) is not None}
        out[key] = {"all": geomean([x for _, x in pairs]), "count": len(pairs), "by_op": by_op}
    return out
