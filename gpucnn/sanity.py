"""Sanity checks before a long training run ("babysitting the learning process").

The course's checklist, run on the user's model, optimizer and data:

1. initial loss: a freshly initialized classifier predicts roughly uniform
   probabilities, so its mean cross-entropy is about ln(C) for C classes.
   Passes when |loss - ln C| <= init_tolerance * ln C (default 10%); the
   zoo models measure 1.00-1.06 x ln C on digits and Fashion-MNIST.
   Weight decay does not enter this number: gpucnn's weight decay lives in
   the optimizer, not in the loss.
2. weight decay is wired in: the same model, from the same initial weights,
   is trained `wd_steps` full-batch steps on the tiny subset once without and
   once with a strong weight decay W = 1 / (lr * wd_steps) (decay alone would
   shrink the weights by about a factor e over the run under SGD or AdamW).
   Passes when the final training loss with decay is at least 1% higher.
   An optimizer that ignores its weight_decay gives two equal losses: FAIL.
3. overfit a tiny subset: the first `subset` (64) training images, no
   regularization (no dropout, no weight decay), full-batch steps with the
   given optimizer and learning rate until the training accuracy (of the
   step's forward pass) reaches 99%, at most `overfit_steps` steps. A learning
   rate far too large (or too small), or a broken backward, fails here.
4. gradients: gpucnn.gradcheck on a float64 copy of the whole model, on
   `gradcheck_samples` training images plus Gaussian noise of std 0.01 (the
   noise breaks exact ties in max-pool windows, which zero-background images
   have; the check is about the model's backward, not the data). With batch
   norm every parameter moves every pre-activation, so a larger step lands on
   a ReLU kink somewhere; eps = 1e-7 avoids that (float64 noise ~1e-9 at that
   step). Passes when every checked element's relative error is <= 1e-3
   (absolute 1e-7 below the floor 1e-4): looser than the per-op tests'
   1e-5, far below the O(1) errors of a wrong backward.
5. preprocessing: the normalized training images are zero-centred
   (every channel's |mean| <= 0.1) and unit-scaled (every channel's std
   within 1 +- 0.1).

    results = run_checks(build_model, make_optimizer, x_train, y_train, num_classes)
    all(r.passed for r in results)

build_model(regularized) must return a freshly initialized model with the
same weights on every call (seed it inside); regularized=False asks for the
model without dropout. make_optimizer(params, weight_decay) returns the
optimizer under test (the user's choice and learning rate).
"""
import copy
import math
from dataclasses import dataclass

import numpy as np

from . import backend
from .gradcheck import gradcheck
from .nn.loss import SoftmaxCrossEntropy
from .nn.module import no_grad
from .trainer import array_loader, NonFiniteLossError, Trainer

INIT_TOLERANCE = 0.10
OVERFIT_TARGET = 0.99
WD_MIN_RISE = 0.01
GRADCHECK = {"eps": 1e-7, "tol": 1e-3, "floor": 1e-4}
GRADCHECK_NOISE = 0.01
PREPROCESSING_TOLERANCE = 0.1


@dataclass
class CheckResult:
    name: str
    value: float      # the measured number (None when it could not be measured)
    expected: str     # the pass criterion, in words and numbers
    passed: bool
    detail: str = ""  # further numbers for the printed line

    def line(self):
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        detail = f"  ({self.detail})" if self.detail else ""
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {value}, expected {self.expected}{detail}"

    def as_json(self):
        value = self.value if self.value is not None and math.isfinite(self.value) else None
        return {"name": self.name, "value": value, "expected": self.expected, "passed": bool(self.passed)}


def _finite(x):
    return x is not None and math.isfinite(x)


def check_initial_loss(model, x, y, num_classes, device="cpu", tolerance=INIT_TOLERANCE):
    """Mean cross-entropy of the untrained model on (x, y) in training mode
    (batch statistics, as the first step sees it), computed on a copy."""
    trainer = Trainer(copy.deepcopy(model), None, device=device)
    with no_grad():
        logits = trainer.model.train()(trainer._input(x))
    loss, _ = SoftmaxCrossEntropy()(logits, trainer._move(y))
    chance = math.log(num_classes)
    passed = _finite(loss) and abs(loss - chance) <= tolerance * chance
    return CheckResult("initial loss", loss, f"ln({num_classes}) = {chance:.4f} +- {tolerance:.0%}", passed,
                       f"{loss / chance:.3f} x ln({num_classes}) on {len(x)} images" if _finite(loss) else "")


def _train_full_batch(model, optimizer, x, y, steps, device, stop_accuracy=None):
    """Full-batch steps on (x, y) -> list of (loss, accuracy), each measured on
    the step's own forward pass (before its update). Stops early at
    stop_accuracy or at a non-finite loss."""
    trainer = Trainer(model, optimizer, device=device)
    loader = array_loader(x, y, batch_size=len(x), shuffle=False)
    history = []
    for _ in range(steps):
        try:
            with np.errstate(all="ignore"):  # a diverging run is an expected outcome here
                stats = trainer.train_epoch(loader)
        except NonFiniteLossError:  # raised before the step: there is no accuracy to report
            history.append((math.nan, 0.0))
            break
        history.append((stats["loss"], stats["accuracy"]))
        if not _finite(stats["loss"]) or (stop_accuracy is not None and stats["accuracy"] >= stop_accuracy):
            break
    return history


def check_overfit(build_model, make_optimizer, x, y, device="cpu", max_steps=200, target=OVERFIT_TARGET):
    model = build_model(False)
    history = _train_full_batch(model, make_optimizer(model.parameters(), 0.0), x, y, max_steps, device,
                                stop_accuracy=target)
    accuracy = max(a for _, a in history)
    steps = next((i + 1 for i, (_, a) in enumerate(history) if a >= target), None)
    last_loss = history[-1][0]
    detail = (f"reached at step {steps}" if steps else f"best over {len(history)} steps") + \
        f", loss {history[0][0]:.4g} -> {last_loss:.4g}" + ("" if _finite(last_loss) else " (diverged)")
    return CheckResult(f"overfit {len(x)} images", accuracy,
                       f">= {target:.0%} train accuracy within {max_steps} steps", steps is not None, detail)


def check_weight_decay(build_model, make_optimizer, x, y, lr, device="cpu", steps=20, min_rise=WD_MIN_RISE):
    decay = 1.0 / (lr * steps)
    losses = []
    for wd in (0.0, decay):
        model = build_model(False)
        losses.append(_train_full_batch(model, make_optimizer(model.parameters(), wd), x, y, steps, device)[-1][0])
    plain, decayed = losses
    rise = decayed / plain - 1 if _finite(plain) and _finite(decayed) and plain > 0 else None
    passed = rise is not None and rise >= min_rise
    return CheckResult("loss rises with weight decay", rise, f"relative rise >= {min_rise:g}", passed,
                       f"loss after {steps} steps: {plain:.4g} without, {decayed:.4g} with weight decay {decay:.3g}")


def check_gradients(model, x, samples=2, max_elements=10, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(backend.to_cpu(x[:samples]), np.float64)
    x = x + GRADCHECK_NOISE * rng.standard_normal(x.shape)
    _, report = gradcheck(model, x, max_elements=max_elements, seed=seed, **GRADCHECK)
    worst = max(report.entries, key=lambda e: e.worst_relative)
    failed = [e.name for e in report.entries if e.worst_relative > report.tol]
    detail = (f"{len(report.entries)} tensors, up to {max_elements} elements each, {len(x)} samples; worst "
              f"{worst.name}" + (f"; failing: {', '.join(failed[:4])}" + ("..." if len(failed) > 4 else "")
                                 if failed else ""))
    return CheckResult("gradient check (float64)", report.worst, f"worst relative error <= {report.tol:g}",
                       report.ok, detail)


def check_preprocessing(x_train, tolerance=PREPROCESSING_TOLERANCE):
    x = np.asarray(x_train, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    mean, std = x.mean(axis=axes), x.std(axis=axes)
    worst_mean = float(np.abs(mean).max())
    worst_std = float(std[np.argmax(np.abs(std - 1))])
    n = f"{len(mean)} channel(s), {len(x)} images"
    return [CheckResult("inputs zero-centred", worst_mean, f"|channel mean| <= {tolerance:g}",
                        worst_mean <= tolerance, n),
            CheckResult("inputs unit-scaled", worst_std, f"channel std within 1 +- {tolerance:g}",
                        abs(worst_std - 1) <= tolerance, n)]


def run_checks(build_model, make_optimizer, x_train, y_train, num_classes, *, lr, device="cpu", subset=64,
               overfit_steps=200, wd_steps=20, init_tolerance=INIT_TOLERANCE, init_images=512,
               gradcheck_samples=2, log=None):
    """Every check, in the course's order -> list of CheckResult.
    log(result) is called as each check finishes."""
    results = []

    def done(result):
        results.append(result)
        if log is not None:
            log(result)

    for r in check_preprocessing(x_train):
        done(r)
    model = build_model(True)
    done(check_initial_loss(model, x_train[:init_images], y_train[:init_images], num_classes, device,
                            init_tolerance))
    done(check_gradients(model, x_train, gradcheck_samples))
    xs, ys = x_train[:subset], y_train[:subset]
    done(check_overfit(build_model, make_optimizer, xs, ys, device, overfit_steps))
    done(check_weight_decay(build_model, make_optimizer, xs, ys, lr, device, wd_steps))
    return results
