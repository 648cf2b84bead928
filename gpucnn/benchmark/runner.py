"""Times every (case, op, kernel version) and its references side by side
(our calls in ops.py, PyTorch's in torch_ref.py, statistics in stats.py).

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

from .. import backend, precision
from ..functional._dispatch import implementation
from . import ceilings, env
from .ops import (CHECK_TOLERANCES, CPU_BASELINE_REPEATS, CPU_BASELINE_SECONDS, OPS, gpucnn_function,
                  make_inputs, ours_call, with_argmax, work)
from .stats import compare, summarize
from .torch_ref import needed, on_cupy_stream, torch_call, torch_inputs
from .timing import rotating, rotation_count, time_cpu, time_cpu_interleaved, time_gpu

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
                    out["baselines"][key] = {"time": time_gpu(on_cupy_stream(torch, rotating(calls)),
                                                              self.repeats, self.warmup, self.max_seconds)}
                except Exception as exc:
                    out["baselines"][key] = {"skipped": _failure(exc)}
            if "medium" in self.precisions and OPS[op][0] == "conv":   # ours-medium's reference
                try:
                    bf16 = [torch_call(torch, op, case, {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                                         for k, v in t.items()}) for t in sets]
                    out["baselines"]["torch_bf16"] = {"time": time_gpu(
                        on_cupy_stream(torch, rotating(bf16)), self.repeats, self.warmup, self.max_seconds)}
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


