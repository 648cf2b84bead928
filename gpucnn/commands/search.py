"""`gpucnn search`: random or grid hyperparameter search over learning rate, weight decay, batch size and optimizer.

Each configuration trains a fresh model for --epochs epochs and is scored on a
validation split (--val-split), or by K-fold cross-validation on the training
set (--k-folds K). Random mode draws --trials configurations: the learning
rate and weight decay log-uniformly from a [lo hi] range (or from a list of
values), batch size and optimizer from their lists; grid mode tries every
combination of the listed values. Prints a table sorted by validation
accuracy; --ensemble M scores the mean softmax of the best M configurations
on the test set; --json-out writes every result."""
import json
from pathlib import Path

import numpy as np

from .. import hparam_search, recipes
from .errors import CommandError, nonnegative_float, nonnegative_int, positive_float, positive_int, ranged
from .train import add_common_arguments, load_data, prepare_outputs, resolve_device, split_data


def add_parser(subparsers):
    p = subparsers.add_parser("search", help="hyperparameter search", description=__doc__)
    add_common_arguments(p)
    p.set_defaults(epochs=2)
    p.add_argument("--mode", choices=("random", "grid"), default="random",
                   help="random: draw --trials configurations; grid: every combination of the lists")
    p.add_argument("--trials", type=positive_int, default=8, help="configurations to draw (random mode)")
    p.add_argument("--lr", type=positive_float, nargs="+", default=[1e-4, 1e-2],
                   help="grid: the values; random: a [lo hi] range sampled log-uniformly (or a list)")
    p.add_argument("--weight-decay", type=nonnegative_float, nargs="+", default=[1e-6, 1e-3],
                   help="L2 weight decay: grid values, or a [lo hi] range for random mode")
    p.add_argument("--batch-size", type=positive_int, nargs="+", default=[64, 128], help="batch sizes to try")
    p.add_argument("--optimizer", nargs="+", choices=recipes.OPTIMIZERS, default=["adam", "momentum"],
                   help="optimizers to try")
    p.add_argument("--k-folds", type=ranged(int, 2), default=None, metavar="K",
                   help="K-fold cross-validation on the training set instead of one validation split "
                        "(default: one split)")
    p.add_argument("--ensemble", type=nonnegative_int, default=0, metavar="M",
                   help="test an ensemble (mean softmax) of the best M configurations (0 = none)")
    p.add_argument("--json-out", metavar="FILE.json", help="all results as JSON (default: not written)")
    p.set_defaults(func=run)


def run(args):
    prepare_outputs(args.json_out)
    device = resolve_device(args.device)
    ds = load_data(args)
    val_split = 0.0 if args.k_folds else (args.val_split or 0.1)
    data = split_data(ds, val_split, args)
    if args.k_folds and args.k_folds > len(data.x_train):
        raise CommandError(f"--k-folds {args.k_folds} is more than the {len(data.x_train)} training images; "
                           f"pass a smaller --k-folds or a larger --subset")
    space = {"lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size,
             "optimizer": args.optimizer}
    configs = hparam_search.search_space(args.mode, space, args.trials, args.seed)
    print(f"{args.mode} search: {len(configs)} configurations, {args.epochs} epoch(s) each, "
          + (f"{args.k_folds}-fold cross-validation" if args.k_folds else f"{len(data.x_val)} validation images"))
    results = hparam_search.run_search(
        configs, data.x_train, data.y_train, k_folds=args.k_folds, x_val=data.x_val, y_val=data.y_val,
        model=args.model, input_shape=ds.input_shape, num_classes=ds.num_classes, epochs=args.epochs,
        device=device, seed=args.seed, augment=args.augment, label_smoothing=args.label_smoothing,
        dropout=args.dropout, patience=args.early_stopping)
    print(hparam_search.results_table(results))
    out = {"dataset": ds.name, "model": args.model, "device": device, "mode": args.mode,
           "k_folds": args.k_folds, "epochs": args.epochs,
           "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}
    if args.ensemble:
        members = [t for r in results[:args.ensemble] for t in r["_trainers"]]
        proba = hparam_search.ensemble_proba(members, data.x_test)
        acc = float(np.mean(proba.argmax(axis=1) == data.y_test))
        singles = [float(np.mean(t.predict_proba(data.x_test).argmax(axis=1) == data.y_test)) for t in members]
        print(f"ensemble of {len(members)} model(s) from the best {args.ensemble} configuration(s): "
              f"test accuracy {acc:.4f} (members: {', '.join(f'{a:.4f}' for a in singles)})")
        out["ensemble"] = {"members": len(members), "test_accuracy": acc, "member_test_accuracies": singles}
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2))
        print(f"results written to {args.json_out}")
    return 0
