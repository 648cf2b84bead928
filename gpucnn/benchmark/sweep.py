"""Thread sweeps: the same benchmark at several thread counts, and how each
part scales (`gpucnn bench --sweep-threads 1,2,...`).

A sweep document holds one ordinary benchmark document per thread count
(schema.py; each with its e2e steps and profiles when asked for) and a
scaling summary built from them:

    schema, schema_version     "gpucnn-bench-sweep", 1
    threads                    [1, 2, ...]
    runs                       [benchmark document per thread count]
    scaling.steps[]            model, ours_ms / torch_ms per thread count,
                               speedup of each (time at the first count / time at n),
                               ratio (ours / torch) per thread count
    scaling.ops[]              case, op, the same per op of the suite

A speed-up above 1 means more threads helped; ours scales at least as well
as PyTorch where ours' speed-up >= torch's.
"""
import numpy as np

from .report import _ms, markdown_table, text_table


def _step_times(doc):
    """{model: {'ours': s, 'torch': s}} of a run's fp32 e2e steps (CPU); the key
    is 'model batch N' when the run timed several batch sizes."""
    out = {}
    e2es = doc.get("e2e_models") or ([doc["e2e"]] if doc.get("e2e") else [])
    several = len({e.get("batch") for e in e2es}) > 1
    for e2e in e2es:
        times = {r["name"]: r["time"]["median_s"] for r in e2e.get("runs", []) if "time" in r}
        if "gpucnn-cpu" in times:
            key = f"{e2e['model']} batch {e2e['batch']}" if several else e2e["model"]
            out[key] = {"ours": times["gpucnn-cpu"], "torch": times.get("torch-cpu")}
    return out


def _op_times(doc):
    out = {}
    for e in doc.get("results", []):
        v = next((v for v in e["versions"] if "time" in v), None)
        if v is not None:
            t = e["baselines"].get("torch_cpu", {}).get("time")
            out[(e["case"], e["op"])] = {"ours": v["time"]["median_s"], "torch": t["median_s"] if t else None}
    return out


def _series(keys, per_thread, threads):
    rows = []
    for key in keys:
        ours = [per_thread[n].get(key, {}).get("ours") for n in threads]
        theirs = [per_thread[n].get(key, {}).get("torch") for n in threads]

        def speedup(ts):
            return [ts[0] / t if ts[0] and t else None for t in ts]
        rows.append({"key": list(key) if isinstance(key, tuple) else key,
                     "ours_s": ours, "torch_s": theirs, "ours_speedup": speedup(ours),
                     "torch_speedup": speedup(theirs),
                     "ratio": [o / t if o and t else None for o, t in zip(ours, theirs)]})
    return rows


def sweep_document(threads, runs):
    steps = {n: _step_times(d) for n, d in zip(threads, runs)}
    ops = {n: _op_times(d) for n, d in zip(threads, runs)}
    step_keys = list(dict.fromkeys(k for n in threads for k in steps[n]))
    op_keys = list(dict.fromkeys(k for n in threads for k in ops[n]))
    return {"schema": "gpucnn-bench-sweep", "schema_version": 1, "threads": list(threads), "runs": runs,
            "scaling": {"steps": _series(step_keys, steps, threads), "ops": _series(op_keys, ops, threads)}}


def _f(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def _rows(sweep, part):
    threads = sweep["threads"]
    header = ["what"] + [f"ours ms @{n}" for n in threads] + [f"torch ms @{n}" for n in threads] + \
        [f"ours/torch @{n}" for n in threads] + [f"speed-up 1->{threads[-1]} ours", "torch"]
    rows = []
    for r in sweep["scaling"][part]:
        name = r["key"] if isinstance(r["key"], str) else " ".join(r["key"])
        rows.append([name] + [_ms(t) if t else "-" for t in r["ours_s"]] +
                    [_ms(t) if t else "-" for t in r["torch_s"]] + [_f(x) for x in r["ratio"]] +
                    [_f(r["ours_speedup"][-1]), _f(r["torch_speedup"][-1])])
    return header, rows


def _geomean(values):
    values = [v for v in values if v]
    return float(np.exp(np.mean(np.log(values)))) if values else None


def _summary_lines(sweep):
    lines = []
    for i, n in enumerate(sweep["threads"]):
        conv = [r["ratio"][i] for r in sweep["scaling"]["ops"] if r["key"][1].startswith("conv")]
        if conv:
            lines.append(f"conv ours/torch @{n} threads: geomean {_f(_geomean(conv))}, "
                         f"max {_f(max(v for v in conv if v) if any(conv) else None)}")
    return lines


def sweep_text(sweep, markdown=False):
    table = markdown_table if markdown else text_table
    env = sweep["runs"][0]["environment"]
    parts = [f"thread sweep {sweep['threads']} on {env['cpu_name']} ({env['cpu_count']} logical CPUs), "
             f"{env['date']}, load {env.get('load_average')}, OPENBLAS_CORETYPE={env.get('openblas_coretype')}"]
    if sweep["scaling"]["steps"]:
        parts += ["", "training steps:", "", table(*_rows(sweep, "steps"))]
    if sweep["scaling"]["ops"]:
        parts += ["", "ops:", "", table(*_rows(sweep, "ops"))]
    parts += [""] + _summary_lines(sweep)
    return "\n".join(parts) + "\n"


def _bars(sweep):
    """(label, ours speed-up, PyTorch's) from the first to the last thread
    count: per op when the sweep timed ops, else per layer kind of each
    profiled step (forward + backward summed over the model's layers)."""
    if sweep["scaling"]["ops"]:
        return [(" ".join(r["key"]), r["ours_speedup"][-1], r["torch_speedup"][-1])
                for r in sweep["scaling"]["ops"]]
    first, last = sweep["runs"][0].get("profile") or [], sweep["runs"][-1].get("profile") or []
    bars = []
    for p0, p1 in zip(first, last):
        kinds = {}
        for side in ("ours", "torch"):
            if p0.get(side) is None or p1.get(side) is None:
                continue
            for a, b in zip(p0[side]["layers"], p1[side]["layers"]):
                k = kinds.setdefault(a["layer"].split(":", 1)[1], {"ours": [0.0, 0.0], "torch": [0.0, 0.0]})
                k[side][0] += a["forward_s"] + a["backward_s"]
                k[side][1] += b["forward_s"] + b["backward_s"]
        for kind, t in kinds.items():
            speed = {side: (t[side][0] / t[side][1] if t[side][1] else None) for side in t}
            if speed["ours"]:
                bars.append((f"{p0['model']} {kind}", speed["ours"], speed["torch"]))
    return bars


def plot_sweep(sweep, path):
    """Left: each model's step time against threads (ours, PyTorch); right:
    the speed-up from the first to the last thread count of each op (or, for
    step-only sweeps, of each layer kind in the step profiles)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sweep["threads"]
    bars = _bars(sweep)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 1.5 + max(3, 0.22 * len(bars))))
    for r in sweep["scaling"]["steps"]:
        a.plot(threads, [t * 1e3 if t else None for t in r["ours_s"]], "o-", label=f"gpucnn {r['key']}")
        a.plot(threads, [t * 1e3 if t else None for t in r["torch_s"]], "s--", label=f"PyTorch {r['key']}")
    a.set_xlabel("threads")
    a.set_ylabel("ms per training step")
    a.set_xticks(threads)
    if sweep["scaling"]["steps"]:
        a.legend(fontsize=7)
    a.set_title("training step time", fontsize=9)
    ys = np.arange(len(bars))
    b.barh(ys - 0.2, [o or 0 for _, o, _ in bars], 0.4, label="gpucnn")
    b.barh(ys + 0.2, [t or 0 for _, _, t in bars], 0.4, label="PyTorch")
    b.axvline(1.0, color="black", linewidth=0.8)
    b.set_yticks(ys)
    b.set_yticklabels([label for label, _, _ in bars], fontsize=6)
    b.invert_yaxis()
    b.set_xlabel(f"speed-up from {threads[0]} to {threads[-1]} threads")
    b.set_title("per op" if sweep["scaling"]["ops"] else "per layer kind (step profiles)", fontsize=9)
    b.legend(fontsize=7)
    env = sweep["runs"][0]["environment"]
    fig.suptitle(f"gpucnn CPU thread sweep on {env['cpu_name']} ({env['date'][:10]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
