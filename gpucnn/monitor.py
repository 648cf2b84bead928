"""Training health, per epoch and per layer (`gpucnn train --monitor`).

What the course says to watch while a network trains:

- update/weight ratio of each parameter: ||w_after - w_before|| / ||w_after||
  for the last optimizer step of the epoch; about 1e-3 is healthy, much
  lower means the learning rate is too small, much higher that it is too
  large;
- gradient norm of each parameter: the L2 norm of its gradient at each
  step (as the optimizer sees it), averaged over the epoch's steps;
- activations of each leaf layer (its output in training forwards): mean
  and standard deviation over all elements of the epoch (from running sums
  of x and x^2), to spot exploding or vanishing signals;
- for each ReLU: the fraction of its outputs that are exactly zero.

warnings(record) flags weight tensors (ndim >= 2) whose ratio leaves
[1e-5, 1e-1] and ReLUs with more than 90% zero outputs.

Device behaviour: every per-step statistic is a 0-d array reduction on the
arrays' own device, appended to a list; nothing is converted to a Python
number until end_epoch, which stacks each list and copies the few totals to
the host once. On a GPU that means no extra host synchronization per step
(the same CuPy array calls as the rest of the array code; not yet run on
a GPU: the session that wrote it had none).

The Trainer calls begin_epoch() when train_epoch starts, before_step()
right before each optimizer step (gradients final, weights not yet
updated) and end_epoch() at the end; activations come from a forward hook
(gpucnn.nn.module's hook list) that is installed only between begin_epoch
and end_epoch and ignores eval-mode and no_grad forwards.
"""
import math

import numpy as np

from . import backend
from .nn.activation import ReLU
from .nn.module import _forward_hooks, is_grad_enabled

RATIO_RANGE = (1e-5, 1e-1)
DEAD_RELU_LIMIT = 0.9


def _total(values, xp):
    """Sum of a list of 0-d device scalars, as a Python float (one host copy)."""
    return float(backend.to_cpu(xp.stack(values).astype(xp.float64).sum())) if values else math.nan


class TrainingMonitor:
    def __init__(self, model):
        self.model = model
        self.layers = {id(m): (name, m) for name, m in model.named_modules() if name and not m._modules}
        self.params = list(model.named_parameters())
        self.history = []
        self._reset()

    def _reset(self):
        self._acts = {}      # layer name -> [sums], [sums of squares], element count, [zero counts]
        self._grads = {}     # parameter name -> [gradient norms]
        self._before = None  # parameter copies before the latest step

    # ---- the Trainer's hooks ------------------------------------------------
    def begin_epoch(self):
        self._reset()
        if self._on_forward not in _forward_hooks:
            _forward_hooks.append(self._on_forward)

    def before_step(self):
        for name, p in self.params:
            if p.grad is not None:
                flat = p.grad.ravel()
                self._grads.setdefault(name, []).append(backend.get_array_module(flat).sqrt(flat @ flat))
        self._before = [p.data.copy() for _, p in self.params]

    def detach(self):
        """Remove the forward hook (end_epoch does; Trainer.fit also calls this
        when an epoch ends by an exception)."""
        if self._on_forward in _forward_hooks:
            _forward_hooks.remove(self._on_forward)

    def end_epoch(self):
        """Finish the epoch -> its record (also appended to self.history)."""
        self.detach()
        record = {"epoch": len(self.history) + 1, "activations": {}, "parameters": {}}
        for name, (sums, squares, count, zeros) in self._acts.items():
            xp = backend.get_array_module(sums[0])
            mean = _total(sums, xp) / count
            var = max(_total(squares, xp) / count - mean * mean, 0.0)
            record["activations"][name] = {
                "type": self._types[name], "mean": mean, "std": math.sqrt(var),
                "zero_fraction": _total(zeros, xp) / count if zeros else None}
        for (name, p), before in zip(self.params, self._before or [None] * len(self.params)):
            xp = backend.get_array_module(p.data)
            norms = self._grads.get(name)
            ratio = math.nan
            if before is not None:
                w, dw = p.data.ravel(), (p.data - before).ravel()
                w_norm, dw_norm = (float(backend.to_cpu(xp.sqrt(v @ v))) for v in (w, dw))
                ratio = dw_norm / w_norm if w_norm > 0 else math.inf
            record["parameters"][name] = {
                "shape": list(p.shape), "update_ratio": ratio,
                "grad_norm": _total(norms, xp) / len(norms) if norms else math.nan}
        self._reset()
        self.history.append(record)
        return record

    @property
    def _types(self):
        return {name: type(m).__name__ for name, m in self.layers.values()}

    def _on_forward(self, module, x, y):
        entry = self.layers.get(id(module))
        if entry is None or not (module.training and is_grad_enabled()):
            return
        name = entry[0]
        flat = y.ravel()
        if flat.dtype.itemsize < 4:  # float16 sums of squares overflow at 65504
            flat = flat.astype("float32")
        sums, squares, count, zeros = self._acts.get(name, ([], [], 0, []))
        sums.append(flat.sum())
        squares.append(flat @ flat)
        if isinstance(module, ReLU):
            zeros.append(flat.size - backend.get_array_module(flat).count_nonzero(flat))
        self._acts[name] = (sums, squares, count + flat.size, zeros)


def warnings(record, ratio_range=RATIO_RANGE, dead_limit=DEAD_RELU_LIMIT):
    """Warning lines for one epoch record (empty when all is well)."""
    lo, hi = ratio_range
    out = []
    for name, stats in record["parameters"].items():
        ratio = stats["update_ratio"]
        if len(stats["shape"]) >= 2 and not lo <= ratio <= hi:
            hint = ("no update: a zero gradient?" if ratio == 0 else
                    "lr too small, or a vanished gradient?" if ratio < lo else
                    "lr too large?" if ratio > hi else "not finite: diverged?")
            out.append(f"update/weight ratio of {name} is {ratio:.2e}, outside [{lo:g}, {hi:g}] ({hint})")
    for name, stats in record["activations"].items():
        if stats["zero_fraction"] is not None and stats["zero_fraction"] > dead_limit:
            out.append(f"ReLU {name} outputs zero for {stats['zero_fraction']:.1%} of its inputs "
                       f"(> {dead_limit:.0%}: dying ReLUs)")
    return out


def plot_monitor(history, path, title=""):
    """Four panels over epochs, one line per layer: update/weight ratio (with
    the healthy band), gradient norm, activation std, ReLU zero fraction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = (("parameters", "update_ratio", "update / weight ratio (last step)", True, lambda n, s: True),
              ("parameters", "grad_norm", "gradient norm (mean over steps)", True, lambda n, s: True),
              ("activations", "std", "activation std", True, lambda n, s: True),
              ("activations", "zero_fraction", "ReLU zero fraction", False,
               lambda n, s: s["zero_fraction"] is not None))
    for ax, (group, key, label, log, keep) in zip(axes.ravel(), panels):
        names = [n for n, s in history[0][group].items() if keep(n, s)] if history else []
        for name in names:
            values = [r[group][name][key] for r in history]
            kind = history[0][group][name].get("type")
            ax.plot(epochs, [np.nan if v is None else v for v in values], "o-", ms=3,
                    label=f"{name} {kind}" if kind else name)
        if key == "update_ratio":
            ax.axhspan(*RATIO_RANGE, color="tab:green", alpha=0.08, label="healthy range")
            ax.axhline(1e-3, color="tab:green", lw=0.8, ls=":")
        if key == "zero_fraction":
            ax.axhline(DEAD_RELU_LIMIT, color="tab:red", lw=0.8, ls="--", label="warning limit")
            ax.set_ylim(0, 1)
        if log:
            ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def json_safe(value):
    """A copy of monitor records with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
