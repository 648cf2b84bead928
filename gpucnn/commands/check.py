"""`gpucnn check`: the course's sanity checks on a model, optimizer and dataset.

Takes the same data, model and optimizer options as `gpucnn train` (so a
train command line can be rerun as `check`; epochs, augmentation, schedules
and early stopping do not apply and are ignored) and prints one line per
check, PASS or FAIL with its numbers (see gpucnn/sanity.py for the criteria).
Exit status 0 only when every check passes, 1 otherwise.
"""
import json
from pathlib import Path

from .. import models, recipes, sanity
from .. import random as grandom
from .errors import CommandError, positive_int, ranged
from .train import (add_common_arguments, add_optimizer_arguments, load_data, prepare_outputs, resolve_device,
                    split_data)


def add_parser(subparsers):
    p = subparsers.add_parser("check", help="sanity-check a model before training (initial loss, overfit, "
                              "gradients, preprocessing)", description=__doc__.splitlines()[0])
    add_common_arguments(p)
    add_optimizer_arguments(p)
    p.add_argument("--tiny", type=positive_int, default=64, metavar="N",
                   help="training images for the overfit and weight-decay checks")
    p.add_argument("--overfit-steps", type=positive_int, default=200, metavar="STEPS",
                   help="full-batch steps allowed to reach 99%% accuracy on the tiny subset")
    p.add_argument("--init-tolerance", type=ranged(float, 0, 1, low_open=True, high_open=True),
                   default=sanity.INIT_TOLERANCE, metavar="FRACTION",
                   help="allowed relative distance of the initial loss from ln(classes), in (0, 1)")
    p.add_argument("--json", metavar="FILE.json", help="write the results as JSON (default: not written)")
    p.set_defaults(func=run)


def model_builder(args, ds):
    """build(regularized) -> a fresh zoo model with the weights of --seed
    (dropout as configured, or none when regularized is False)."""
    def build(regularized=True):
        grandom.manual_seed(args.seed)
        return models.build(args.model, ds.input_shape[0], ds.num_classes, ds.input_shape[1],
                            dropout=args.dropout if regularized else 0.0)
    return build


def run(args):
    lr = recipes.DEFAULT_LR[args.optimizer] if args.lr is None else args.lr  # argparse: --lr > 0
    prepare_outputs(args.json)
    device = resolve_device(args.device)
    ds = load_data(args)
    data = split_data(ds, args.val_split, args)
    if args.tiny > len(data.x_train):
        raise CommandError(f"--tiny {args.tiny} exceeds the {len(data.x_train)} training images; "
                           f"give a smaller --tiny or a larger --subset")
    print(f"model: {args.model}; optimizer {args.optimizer}, lr {lr:g}; device {device}; "
          f"{len(data.x_train)} training images, {ds.num_classes} classes")
    results = sanity.run_checks(
        model_builder(args, ds), lambda params, wd: recipes.make_optimizer(args.optimizer, params, lr, wd),
        data.x_train, data.y_train, ds.num_classes, lr=lr, device=device, subset=args.tiny,
        overfit_steps=args.overfit_steps, init_tolerance=args.init_tolerance,
        log=lambda r: print(r.line(), flush=True))
    passed = all(r.passed for r in results)
    print(f"{sum(r.passed for r in results)}/{len(results)} checks passed")
    if args.json:
        Path(args.json).write_text(json.dumps({"checks": [r.as_json() for r in results], "passed": passed},
                                              indent=2))
        print(f"results written to {args.json}")
    return 0 if passed else 1
