"""`gpucnn lr-find`: the learning-rate range test on a model and dataset.

An exponential learning-rate sweep over mini-batches (from --min to --max in
--steps steps, stopping when the loss diverges), a suggested learning rate
with the rule used, and optionally a plot and a JSON file. The model and
optimizer are restored afterwards; see gpucnn/lr_finder.py.
"""
import json
from pathlib import Path

from .. import lr_finder
from ..data import DataLoader, build_augmentation
from .errors import CommandError, positive_float, ranged
from .train import (add_common_arguments, add_optimizer_arguments, load_data, make_trainer_from_args,
                    prepare_outputs, resolve_device, split_data)


def add_parser(subparsers):
    p = subparsers.add_parser("lr-find", help="learning-rate range test: sweep the lr, suggest one",
                              description=__doc__.splitlines()[0])
    add_common_arguments(p)
    add_optimizer_arguments(p)
    p.add_argument("--min", type=positive_float, default=1e-7, dest="min_lr", metavar="LR", help="first learning rate of the sweep")
    p.add_argument("--max", type=positive_float, default=10.0, dest="max_lr", metavar="LR", help="last learning rate of the sweep")
    p.add_argument("--steps", type=ranged(int, 2), default=100, help="mini-batches in the sweep, >= 2")
    p.add_argument("--plot", metavar="FILE.png", help="plot of the loss against the learning rate (default: no plot)")
    p.add_argument("--json", metavar="FILE.json", help='write {"suggested_lr", "rule", "lrs", "losses", ...} (default: not written)')
    p.set_defaults(func=run)


def run(args):
    if not 0 < args.min_lr < args.max_lr:
        raise CommandError(f"need 0 < --min < --max, got --min {args.min_lr:g} --max {args.max_lr:g}")
    prepare_outputs(args.plot, args.json)
    device = resolve_device(args.device)
    ds = load_data(args)
    data = split_data(ds, args.val_split, args)
    trainer = make_trainer_from_args(args, ds, device)
    aug = build_augmentation(args.augment, ds.num_classes, ds.input_shape[-1])
    loader = DataLoader(data.x_train, data.y_train, args.batch_size, transform=aug, seed=args.seed)
    print(f"model: {args.model}; optimizer {args.optimizer}; device {device}; lr {args.min_lr:g} -> "
          f"{args.max_lr:g} over {args.steps} batches of {args.batch_size}")
    result = lr_finder.lr_find(trainer, loader, args.min_lr, args.max_lr, args.steps)
    best = min(range(len(result.smoothed)), key=lambda i: result.smoothed[i])
    print(f"{len(result.lrs)} steps" + (f", stopped at lr {result.lrs[-1]:.3g}: the loss diverged"
                                        if result.diverged else ", no divergence up to --max"))
    print(f"lowest smoothed loss {result.smoothed[best]:.4f} at lr {result.lrs[best]:.3g}")
    if best == 0:
        print("note: the loss never fell below its first value; widen the range (--min, --max) "
              "or run `gpucnn check`")
    print(f"suggested lr: {result.suggested_lr:.3g}  (rule: {result.rule})")
    if args.json:
        Path(args.json).write_text(json.dumps(result.as_json(), indent=2))
        print(f"results written to {args.json}")
    if args.plot:
        lr_finder.plot_lr_find(result, args.plot, f"lr range test: {args.model} on {ds.name}, {args.optimizer}")
        print(f"plot written to {args.plot}")
    return 0
