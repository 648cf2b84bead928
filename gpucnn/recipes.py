"""Training recipes by name, above the Trainer (the course's protocol).

- prepare_data: subset, validation split, normalization fitted on the
  training split only;
- make_optimizer / make_scheduler / make_trainer: optimizers, schedules and
  a ready Trainer for a zoo model, by name;
- epoch_line: the one-line summary printed after each epoch (the epochs
  themselves, early stopping included, run in Trainer.fit).
Hyperparameter search and k-fold cross-validation are in hparam_search.py.
"""
from dataclasses import dataclass

import numpy as np

from . import models, nn, optim
from . import random as grandom
from .data import Normalize, train_val_split
from .trainer import Trainer


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw")
# Learning rates that work for the default model; torch.optim's defaults otherwise.
DEFAULT_LR = {"sgd": 0.05, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.01,
              "rmsprop": 0.001, "adadelta": 1.0, "adam": 0.001, "adamw": 0.001}
SCHEDULES = ("none", "step", "cosine")


@dataclass
class Splits:
    """Normalized float32 arrays; x_val/y_val are None without a validation split."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    normalize: Normalize


def prepare_data(dataset, val_split=0.1, subset=None, seed=0):
    """Split and normalize a Dataset; mean/std come from the (sub)training part only."""
    x, y = dataset.x_train, dataset.y_train
    if subset:
        x, y = x[:subset], y[:subset]
    x_val = y_val = None
    if val_split:
        x, y, x_val, y_val = train_val_split(x, y, val_split, seed=seed)
    norm = Normalize.fit(x)
    return Splits(norm.apply(x), y, None if x_val is None else norm.apply(x_val), y_val,
                  norm.apply(dataset.x_test), dataset.y_test, norm)


def make_optimizer(name, params, lr=None, weight_decay=0.0):
    """An optimizer by name; 'momentum' and 'nesterov' are SGD with momentum 0.9."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    lr = DEFAULT_LR[name] if lr is None else lr
    if name in ("sgd", "momentum", "nesterov"):
        momentum = 0.0 if name == "sgd" else 0.9
        return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         nesterov=name == "nesterov")
    cls = {"adagrad": optim.Adagrad, "rmsprop": optim.RMSprop, "adadelta": optim.Adadelta,
           "adam": optim.Adam, "adamw": optim.AdamW}[name]
    return cls(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(name, optimizer, epochs, warmup=0):
    """A per-epoch learning-rate schedule: none, step (x0.1 after each third of
    the run) or cosine annealing to zero; optional linear warmup epochs first."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    sched = None
    if name == "step":
        sched = optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    elif name == "cosine":
        sched = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup))
    if warmup:
        sched = optim.lr_scheduler.LinearWarmup(optimizer, warmup_epochs=warmup, after=sched)
    return sched


def epoch_line(rec, epochs):
    val = "" if rec["val_loss"] is None else f"  val loss {rec['val_loss']:.4f} acc {rec['val_accuracy']:.4f}"
    return (f"epoch {rec['epoch']:3d}/{epochs}  train loss {rec['train_loss']:.4f} acc {rec['train_accuracy']:.4f}"
            f"{val}  {rec['seconds']:.1f}s {rec['images_per_second']:.0f} img/s")


def make_trainer(model, input_shape, num_classes, *, optimizer="adam", lr=None, weight_decay=0.0,
                 label_smoothing=0.0, dropout=None, schedule="none", epochs=1, warmup=0, device="cpu", seed=0):
    """A Trainer for a fresh model from the zoo, weights seeded by `seed`."""
    grandom.manual_seed(seed)
    net = models.build(model, input_shape[0], num_classes, input_shape[1], dropout=dropout)
    opt = make_optimizer(optimizer, net.parameters(), lr, weight_decay)
    return Trainer(net, opt, loss_fn=nn.SoftmaxCrossEntropy(label_smoothing=label_smoothing),
                   scheduler=make_scheduler(schedule, opt, epochs, warmup), device=device)
