"""Hyperparameter search over training recipes (gpucnn.recipes):

- kfold_indices: k-fold cross-validation splits;
- search_space / run_search: random or grid search, results sorted by
  validation accuracy; format_config / results_table: their report;
- ensemble_proba: the mean of several models' softmax outputs.
"""
import itertools
import time

import numpy as np

from .data import DataLoader, build_augmentation
from .recipes import epoch_line, make_trainer


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
