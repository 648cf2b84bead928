"""Benchmark output: terminal table, markdown, a PNG bar chart of the ratios,
and two runs side by side (--compare).

Ratios are our median time over the reference's (below 1 = we are faster);
`of ceiling` is our GFLOP/s (conv) or GB/s (pool) as a percentage of the
machine's measured matmul or copy ceiling.
"""
import json

from .ops import OPS, REFERENCES
from .stats import best_version, geomean


def _ms(seconds):
    return f"{seconds * 1e3:.3g}"


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _refs(doc):
    """References that have at least one timing in this run, in a fixed order."""
    return [r for r in REFERENCES
            if any("time" in e["baselines"].get(r, {}) for e in doc["results"])]


def result_rows(doc):
    """(header, rows) of one run: a row per (case, op, version)."""
    refs = _refs(doc)
    header = (["case", "op", "version", "median ms", "IQR ms", "rate"]
              + [f"{r} ms" for r in refs] + [f"vs {r}" for r in refs] + ["of ceiling", "check"])
    rows = []
    for e in doc["results"]:
        base = [e["baselines"].get(r, {}) for r in refs]
        base_ms = [_ms(b["time"]["median_s"]) if "time" in b else "-" for b in base]
        for v in e["versions"]:
            head = [e["case"], e["op"], version_label(v)]
            if "time" not in v:
                rows.append(head + [f"skipped: {v.get('skipped', '?')}"[:60]] + [""] * (len(header) - 4))
                continue
            t = v["time"]
            rate = (f"{v['gflops']:.1f} GFLOP/s" if v.get("gflops")
                    else f"{v['gbps']:.2f} GB/s" if v.get("gbps") else "-")
            ratios = v.get("ratios", {})
            ceiling = ratios.get("of_matmul_ceiling", ratios.get("of_copy_ceiling"))
            check = v.get("check")
            rows.append(head + [_ms(t["median_s"]), f"{_ms(t['q1_s'])}-{_ms(t['q3_s'])}", rate]
                        + base_ms + [_fmt(ratios.get(f"vs_{r}")) for r in refs]
                        + ["-" if ceiling is None else f"{100 * ceiling:.1f}%",
                           "-" if check is None else ("ok" if check["ok"] else "FAIL")])
    return header, rows


def summary_rows(doc):
    """(header, rows): geometric mean of each time ratio, per op and overall,
    from the median times and (columns marked 'min') from the fastest calls."""
    cols = [(k, g) for k, g in doc["summary"]["geomean"].items() if k.startswith("vs_")]
    cols += [(f"{k} (min)", g) for k, g in doc["summary"].get("geomean_min", {}).items()]
    header = ["op"] + [k for k, _ in cols]
    rows = [[op] + [_fmt(g["by_op"].get(op)) for _, g in cols]
            for op in OPS if any(op in g["by_op"] for _, g in cols)]
    rows.append(["all (geomean)"] + [_fmt(g["all"]) for _, g in cols])
    return header, rows


def text_table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(header, rows):
    esc = lambda c: str(c).replace("|", "\\|")
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def environment_lines(doc):
    env, s, c = doc["environment"], doc["settings"], doc["ceilings"]
    git = env.get("git") or {}
    lines = [f"date {env['date']}, host {env.get('hostname', '?')}, suite {s['suite']}, device {s['device']}",
             f"CPU {env['cpu_name']} ({env.get('cpu_count')} logical CPUs), threads {s['threads']} "
             f"(Numba {env.get('numba_threads')}, PyTorch {env.get('torch_threads')})"]
    if env.get("gpu_name"):
        lines.append(f"GPU {env['gpu_name']} (sm {env.get('compute_capability')}, {env.get('sm_count')} SMs), "
                     f"driver {env.get('driver_version')}, CUDA runtime {env.get('cuda_runtime_version')}, "
                     f"cuDNN {env.get('cudnn')}")
    lines.append(f"NumPy {env['numpy']}, Numba {env['numba']}, CuPy {env['cupy']}, PyTorch {env['torch']}; "
                 f"git {git.get('commit') or '?'}{' (dirty)' if git.get('dirty') else ''}")
    if "skipped" in c:
        lines.append(f"ceilings: skipped ({c['skipped']})")
    else:
        lines.append(f"ceilings ({c['device']}): copy {c['copy_gbps']:.1f} GB/s, "
                     f"float32 matmul {c['matmul_gflops']:.0f} GFLOP/s")
    lines.append(f"timing: median of {s['repeats']} after {s['warmup']} warm-up calls; "
                 f"ratio = our time / reference time (below 1 = faster)")
    if s.get("torch_skipped"):
        lines.append(f"PyTorch comparison skipped: {s['torch_skipped']}")
    return lines


def text_report(doc):
    parts = environment_lines(doc)
    if doc["results"]:
        parts += ["", text_table(*result_rows(doc))]
    if len(summary_rows(doc)[0]) > 1:
        parts += ["", "geometric means of the ratios (best version per case and op):",
                  text_table(*summary_rows(doc))]
    if doc["summary"]["failed_checks"]:
        parts += ["", "FAILED correctness checks: " + ", ".join(doc["summary"]["failed_checks"])]
    if doc["summary"].get("crashed"):
        parts += ["", "CRASHED kernel versions: " + "; ".join(doc["summary"]["crashed"])]
    for e2e in _e2e_docs(doc):
        parts += ["", e2e_text(e2e)]
    if any(e.get("ratios") for e in _e2e_docs(doc)):
        parts += ["", "end to end, our step time / PyTorch's:", text_table(*e2e_ratio_rows(doc))]
    for ep in doc.get("e2e_epoch") or []:
        parts += ["", epoch_text(ep)]
    return "\n".join(parts)


def markdown_report(doc):
    parts = [f"# gpucnn bench: {doc['settings']['suite']} suite on {doc['settings']['device']}", ""]
    parts += [f"- {line}" for line in environment_lines(doc)]
    if doc["results"]:
        parts += ["", markdown_table(*result_rows(doc))]
    if len(summary_rows(doc)[0]) > 1:
        parts += ["", "Geometric means of the ratios (best version per case and op):", "",
                  markdown_table(*summary_rows(doc))]
    if doc["summary"]["failed_checks"]:
        parts += ["", "**Failed correctness checks:** " + ", ".join(doc["summary"]["failed_checks"])]
    if doc["summary"].get("crashed"):
        parts += ["", "**Crashed kernel versions:** " + "; ".join(doc["summary"]["crashed"])]
    if _e2e_docs(doc):
        parts += ["", "## End to end", "", "```", "\n\n".join(e2e_text(e) for e in _e2e_docs(doc)), "```"]
    if any(e.get("ratios") for e in _e2e_docs(doc)):
        parts += ["", "Our step time / PyTorch's (below 1: gpucnn faster), per PyTorch mode:", "",
                  markdown_table(*e2e_ratio_rows(doc))]
    if doc.get("e2e_epoch"):
        parts += ["", "## Whole epochs", "", "```", "\n\n".join(epoch_text(e) for e in doc["e2e_epoch"]), "```"]
    return "\n".join(parts) + "\n"


def _e2e_docs(doc):
    return doc.get("e2e_models") or ([doc["e2e"]] if doc.get("e2e") else [])


def e2e_ratio_rows(doc):
    """(header, rows): one row per (model, batch, device, precision, our mode)."""
    torch_modes = ("eager", "graph", "compile")
    header = ["model", "batch", "device", "precision", "our mode", "ours ms"] + [f"vs torch {m}" for m in torch_modes]
    rows = []
    for e in _e2e_docs(doc):
        for r in e.get("ratios") or []:
            rows.append([e["model"], str(e["batch"]), r["device"], r["precision"], r["mode"], _ms(r["ours_s"])]
                        + [_fmt(r["vs_torch"].get(m)) for m in torch_modes])
    return header, rows


def epoch_text(ep):
    lines = [f"whole epoch: {ep['model']}, batch {ep['batch']}, {ep['images']} {ep['dataset']} images"]
    for r in ep["runs"]:
        lines.append(f"  {r['name']:<22} " + (f"{r['seconds']:.2f} s  {r['images_per_s']:.0f} images/s"
                                             if "seconds" in r else f"skipped: {r['skipped']}"))
    return "\n".join(lines)


def e2e_text(e2e):
    lines = [f"end to end: {e2e.get('model')} training step, batch {e2e.get('batch')}"]
    for r in e2e.get("runs", []):
        if "time" in r:
            lines.append(f"  {r['name']:<26} {_ms(r['time']['median_s'])} ms/step  "
                         f"{r['images_per_s']:.0f} images/s")
        else:
            lines.append(f"  {r['name']:<26} skipped: {r['skipped']}")
    return "\n".join(lines)


def plot_ratios(doc, path):
    """Horizontal bars, one group per (case, op), one bar per reference:
    our time / the reference's time on a log axis, 1 = parity."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"vs_{r}" for r in _refs(doc)]
    labels, values = [], []
    for e in doc["results"]:
        v = best_version(e)
        if v is not None and v.get("ratios"):
            labels.append(f"{e['case']} {e['op']} ({v['version']})")
            values.append([v["ratios"].get(k) for k in keys])
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.28 * max(1, len(labels)) * max(1, len(keys))))
    height = 0.8 / max(1, len(keys))
    for j, key in enumerate(keys):
        ys = [i + j * height for i, row in enumerate(values) if row[j] is not None]
        xs = [row[j] for row in values if row[j] is not None]
        ax.barh(ys, xs, height=height, label=f"our time / {key[3:]} time")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio (log scale; < 1 = gpucnn faster)")
    env = doc["environment"]
    ax.set_title(f"gpucnn {doc['settings']['suite']} on {env.get('gpu_name') or env['cpu_name']} "
                 f"({env['date'][:10]})", fontsize=9)
    if keys:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load(path):
    with open(path) as f:
        return json.load(f)


def version_label(v):
    """'2', or '3 high' where a conv result names its precision other than highest."""
    p = v.get("precision")
    return v["version"] if p in (None, "highest") else f"{v['version']} {p}"


def compare_rows(a, b):
    """(header, rows, geomean of B/A): our median times of two runs matched on
    (case, op, version)."""
    def times(doc):
        return {(e["case"], e["op"], version_label(v)): v["time"]["median_s"]
                for e in doc["results"] for v in e["versions"] if "time" in v}
    ta, tb = times(a), times(b)
    header = ["case", "op", "version", "A ms", "B ms", "B/A"]
    rows, ratios = [], []
    for key in list(ta) + [k for k in tb if k not in ta]:
        x, y = ta.get(key), tb.get(key)
        r = y / x if x and y else None
        if r is not None:
            ratios.append(r)
        rows.append(list(key) + ["-" if x is None else _ms(x), "-" if y is None else _ms(y), _fmt(r)])
    return header, rows, geomean(ratios)


def compare_report(a, b, names=("A", "B"), markdown=False):
    header, rows, g = compare_rows(a, b)
    table = markdown_table if markdown else text_table
    lines = []
    for name, doc in zip(names, (a, b)):
        env = doc["environment"]
        lines.append(f"{name}: {env['date']} {doc['settings']['suite']} on {doc['settings']['device']} "
                     f"({env.get('gpu_name') or env['cpu_name']}), git {(env.get('git') or {}).get('commit')}")
    lines += ["", table(header, rows), "", f"geometric mean of B/A: {_fmt(g, '.3f')}"]
    keys = sorted(set(a["summary"]["geomean"]) | set(b["summary"]["geomean"]))
    if keys:
        ga, gb = a["summary"]["geomean"], b["summary"]["geomean"]
        srows = [[k, _fmt((ga.get(k) or {}).get("all")), _fmt((gb.get(k) or {}).get("all"))] for k in keys]
        lines += ["", table(["ratio (geomean)", "A", "B"], srows)]
    return "\n".join(lines) + "\n"
