"""The training protocol from the course, above the Trainer.

- prepare_data: subset, validation split, normalization fitted on the
  training split only;
- make_optimizer / make_scheduler / make_trainer: optimizers, schedules and
  a ready Trainer for a zoo model, by name;
- epoch_line: the one-line summary printed after each epoch (the epochs
  themselves, early stopping included, run in Trainer.fit);
- kfold_indices, search_space / run_search: k-fold cross-validation and
  random or grid hyperparameter search, results sorted by validation accuracy;
- ensemble_proba: the mean of several models' softmax outputs.
"""
import itertools
import time
from dataclasses import dataclass

import numpy as np

from . import models, nn, optim
from . import random as gpucnn_random
from .data import DataLoader, Normalize, build_augmentation, train_val_split
from .train import Trainer

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


def kfold_indices(n, k, seed=0):
    """k (train_idx, val_idx) pairs: a seeded permutation cut into k nearly equal folds."""
    if not 2 <= k <= n:
        raise ValueError(f"k-fold needs 2 <= k <= n, got k={k}, n={n}")
    folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
    return [(np.sort(np.concatenate(folds[:i] + folds[i + 1:])), np.sort(folds[i])) for i in range(k)]


def ensemble_proba(trainers, x, batch_size=512):
    """Mean of the softmax outputs of several trained models (an ensemble)."""
    return np.mean([t.predict_proba(x, batch_size=batch_size) for t in trainers], axis=0)


SEARCH_KEYS = ("lr", "weight_decay", "batch_size", "optimizer")


def search_space(mode, space, n_trials=8, seed=0):
    """Configurations to try. space: dict key -> list of values.

    grid: every combination; random: n_trials draws, each key uniform over its
    list (a learning rate or weight decay list of two numbers [lo, hi] is
    sampled log-uniformly instead, the usual scale for those).
    """
    keys = sorted(space)
    if mode == "grid":
        return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
    if mode != "random":
        raise ValueError(f"search mode must be 'grid' or 'random', got {mode!r}")
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n_trials):
        cfg = {}
        for k in keys:
            values = space[k]
            if k in ("lr", "weight_decay") and len(values) == 2 and min(values) > 0:
                lo, hi = np.log(min(values)), np.log(max(values))
                cfg[k] = float(np.exp(rng.uniform(lo, hi)))
            else:
                cfg[k] = values[int(rng.integers(len(values)))]
        configs.append(cfg)
    return configs


def make_trainer(model, input_shape, num_classes, *, optimizer="adam", lr=None, weight_decay=0.0,
                 label_smoothing=0.0, dropout=None, schedule="none", epochs=1, warmup=0, device="cpu", seed=0):
    """A Trainer for a fresh model from the zoo, weights seeded by `seed`."""
    gpucnn_random.manual_seed(seed)
    net = models.build(model, input_shape[0], num_classes, input_shape[1], dropout=dropout)
    opt = make_optimizer(optimizer, net.parameters(), lr, weight_decay)
    return Trainer(net, opt, loss_fn=nn.SoftmaxCrossEntropy(label_smoothing=label_smoothing),
                   scheduler=make_scheduler(schedule, opt, epochs, warmup), device=device)


def fit_one(config, x_tr, y_tr, x_val, y_val, *, model, input_shape, num_classes, epochs, device,
            seed, augment=(), label_smoothing=0.0, dropout=None, patience=None, log=None):
    """Build, train and evaluate one model for a search configuration; returns (trainer, records)."""
    trainer = make_trainer(model, input_shape, num_classes, optimizer=config["optimizer"], lr=config["lr"],
                           weight_decay=config["weight_decay"], label_smoothing=label_smoothing,
                           dropout=dropout, device=device, seed=seed)
    aug = build_augmentation(list(augment), num_classes, input_shape[-1])
    train_loader = DataLoader(x_tr, y_tr, config["batch_size"], transform=aug, seed=seed)
    val_loader = DataLoader(x_val, y_val, 512, shuffle=False)
    on_epoch_end = (lambda rec: log(epoch_line(rec, epochs))) if log else None
    records = trainer.fit(train_loader, val_loader, epochs, early_stopping_patience=patience,
                          on_epoch_end=on_epoch_end)
    return trainer, records


def run_search(configs, x, y, *, k_folds=None, x_val=None, y_val=None, log=print, **fit_kwargs):
    """Train each configuration; with k_folds, k-fold cross-validation on (x, y),
    else train on (x, y) and validate on (x_val, y_val). Returns result dicts
    sorted by mean validation accuracy (best first), each with the trainers of
    its runs under "_trainers" (for ensembles)."""
    results = []
    seed = fit_kwargs.pop("seed", 0)
    for i, cfg in enumerate(configs, 1):
        t0 = time.perf_counter()
        splits = ([(x[tr], y[tr], x[va], y[va]) for tr, va in kfold_indices(len(x), k_folds, seed)]
                  if k_folds else [(x, y, x_val, y_val)])
        accs, losses, trainers = [], [], []
        for fold, (xt, yt, xv, yv) in enumerate(splits):
            trainer, recs = fit_one(cfg, xt, yt, xv, yv, seed=seed + fold, **fit_kwargs)
            best = max(recs, key=lambda r: r["val_accuracy"])
            accs.append(best["val_accuracy"])
            losses.append(best["val_loss"])
            trainers.append(trainer)
        res = dict(cfg, val_accuracy=float(np.mean(accs)), val_accuracy_std=float(np.std(accs)),
                   val_loss=float(np.mean(losses)), folds=len(splits),
                   seconds=time.perf_counter() - t0, _trainers=trainers)
        results.append(res)
        if log:
            log(f"[{i}/{len(configs)}] {format_config(cfg)}  val acc {res['val_accuracy']:.4f}"
                f" (+-{res['val_accuracy_std']:.4f}, {len(splits)} fold(s))  {res['seconds']:.1f}s")
    return sorted(results, key=lambda r: -r["val_accuracy"])


def format_config(cfg):
    return "  ".join(f"{k}={cfg[k]:.3g}" if isinstance(cfg[k], float) else f"{k}={cfg[k]}"
                     for k in SEARCH_KEYS if k in cfg)


def results_table(results):
    """A plain-text table of search results, best validation accuracy first."""
    head = (f"{'rank':>4}  {'optimizer':<9} {'lr':>9} {'weight_decay':>12} {'batch':>5}  "
            f"{'val_acc':>7} {'+-':>6}  {'val_loss':>8}")
    lines = [head, "-" * len(head)]
    for rank, r in enumerate(results, 1):
        lines.append(f"{rank:>4}  {r['optimizer']:<9} {r['lr']:>9.3g} {r['weight_decay']:>12.3g} {r['batch_size']:>5}"
                     f"  {r['val_accuracy']:>7.4f} {r['val_accuracy_std']:>6.4f}  {r['val_loss']:>8.4f}")
    return "\n".join(lines)
