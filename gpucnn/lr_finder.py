"""The learning-rate range test: train with an exponentially growing learning
rate and watch the loss.

Step i (of `steps`) trains one mini-batch at

    lr_i = min_lr * (max_lr / min_lr) ** (i / (steps - 1))

(the loader is cycled when it runs out). The raw losses are smoothed by an
exponential moving average with bias correction,

    avg_i = beta * avg_(i-1) + (1 - beta) * loss_i,   smoothed_i = avg_i / (1 - beta^(i+1)),

with beta = 0.9 (a memory of about 10 steps: with the default 100 steps over
eight decades the smoothed curve lags the raw one by under a decade), and
the sweep stops early once the loss diverges: a non-finite loss, or a
smoothed loss above `diverge` (4) times the best smoothed loss so far.

Suggested learning rate (RULE): the learning rate at the minimum of the
smoothed loss, divided by 10. At the minimum the loss is about to blow up, so
a tenth of it is still in the region where the loss falls fast; this rule is
less sensitive to noise than the steepest point of the curve.

Nothing changes: the model's parameters and buffers, the optimizer's state and
hyperparameters and gpucnn.random's stream are restored afterwards, and the
gradients are cleared.
"""
import copy
import math
from dataclasses import dataclass

import numpy as np

from . import random as grandom

RULE = "lr at the minimum of the smoothed loss / 10"


@dataclass
class LRFindResult:
    lrs: list          # the learning rate of each step taken
    losses: list       # the raw mini-batch loss of each step
    smoothed: list     # the bias-corrected moving average
    suggested_lr: float
    rule: str
    diverged: bool     # True if the sweep stopped before max_lr

    def as_json(self):
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 (JSON has no NaN)
        return {"suggested_lr": self.suggested_lr, "rule": self.rule, "lrs": self.lrs,
                "losses": [finite(v) for v in self.losses], "smoothed": [finite(v) for v in self.smoothed],
                "diverged": self.diverged}


def _batches(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_find: the loader yields no batches")


def lr_find(trainer, loader, min_lr=1e-7, max_lr=10.0, steps=100, beta=0.9, diverge=4.0, progress=None):
    """Run the range test with `trainer`'s model, optimizer and loss on
    `loader`'s mini-batches -> LRFindResult. progress(i, lr, loss) per step."""
    if not 0 < min_lr < max_lr:
        raise ValueError(f"lr_find: need 0 < min_lr < max_lr, got {min_lr}, {max_lr}")
    if steps < 2:
        raise ValueError(f"lr_find: steps must be >= 2, got {steps}")
    model, optimizer = trainer.model, trainer.optimizer
    saved_model, saved_opt = model.state_dict(), copy.deepcopy(optimizer.state_dict())
    saved_rng, was_training = grandom.get_state(), model.training
    lrs, losses, smoothed = [], [], []
    avg, best, diverged = 0.0, math.inf, False
    try:
        model.train()
        batches = _batches(loader)
        for i in range(steps):
            lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            xb, yb = next(batches)
            with np.errstate(all="ignore"):  # the end of the sweep is meant to diverge
                optimizer.zero_grad()
                loss, dlogits = trainer.loss_fn(model(trainer._input(xb)), trainer._move(yb))
                model.backward(dlogits)
                optimizer.step()
            avg = beta * avg + (1 - beta) * loss
            smooth = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(smooth)
            if progress is not None:
                progress(i, lr, loss)
            if not math.isfinite(smooth) or smooth > diverge * best:
                diverged = True
                break
            best = min(best, smooth)
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        optimizer.zero_grad()
        model.train(was_training)
        grandom.set_state(saved_rng)
    finite = [(s, lr) for s, lr in zip(smoothed, lrs) if math.isfinite(s)]
    suggested = min(finite)[1] / 10 if finite else min_lr
    return LRFindResult(lrs, losses, smoothed, suggested, RULE, diverged)


def plot_lr_find(result, path, title=""):
    """Loss against learning rate (log scale), raw and smoothed, with the suggestion marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result.lrs, result.losses, ".", alpha=0.35, label="mini-batch loss")
    ax.plot(result.lrs, result.smoothed, "-", label="smoothed loss")
    ax.axvline(result.suggested_lr, color="tab:red", linestyle="--",
               label=f"suggested lr {result.suggested_lr:.3g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # keep the diverged tail from flattening the interesting part
        ax.set_ylim(min(finite) * 0.9, max(finite[0], min(finite)) * 1.5)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title or f"learning-rate range test ({result.rule})")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
