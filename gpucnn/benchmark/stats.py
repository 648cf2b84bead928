"""Statistics of the benchmark: a result's error against a reference, the
best version of an entry, and geometric means of the ratios."""
import math

import numpy as np

from .. import backend
from .ops import CHECK_TOLERANCE, OPS


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
