"""`gpucnn train`: train a CNN on a dataset, with progress, metrics and a plot.

The default (`gpucnn train`) trains the default model on Fashion-MNIST from
/usr/share/datasets/fashion-mnist, or on scikit-learn's 8x8 digits when that
is missing (it says which). Ctrl-C saves a checkpoint; --resume continues.
"""
import json
import os
import sys
from pathlib import Path

from .. import backend, models, protocol
from ..data import AUGMENTATIONS, DATASETS, DataLoader, build_augmentation, load_dataset
from . import train_distributed

INTERRUPT_CHECKPOINT = "gpucnn-interrupted.ckpt.npz"


def add_common_arguments(p):
    """Data, model and device arguments shared by `train` and `search`."""
    p.add_argument("--dataset", choices=DATASETS, default="auto",
                   help="auto = Fashion-MNIST if installed, else scikit-learn's 8x8 digits")
    p.add_argument("--data-dir", help="directory of the dataset files (the .npz file for --dataset npz)")
    p.add_argument("--model", choices=models.MODELS, default=models.DEFAULT_MODEL)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--augment", nargs="*", default=[], choices=AUGMENTATIONS, metavar="AUG",
                   help=f"batch augmentations, in order: {', '.join(AUGMENTATIONS)}")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=None, help="dropout probability (model default if omitted)")
    p.add_argument("--val-split", type=float, default=0.1, help="fraction of the training set held out (0 = none)")
    p.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better val accuracy; restores the best weights")
    p.add_argument("--subset", type=int, default=None, metavar="N", help="train on the first N training images only")
    p.add_argument("--device", choices=backend.DEVICES, default="auto")
    p.add_argument("--seed", type=int, default=0)


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train a CNN", description=__doc__.splitlines()[0])
    add_common_arguments(p)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=protocol.OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default depends on the optimizer)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    p.add_argument("--schedule", choices=protocol.SCHEDULES, default="none")
    p.add_argument("--warmup", type=int, default=0, metavar="EPOCHS", help="linear learning-rate warmup epochs")
    p.add_argument("--metrics-out", metavar="FILE.json")
    p.add_argument("--plot", metavar="FILE.png", help="loss and accuracy curves")
    p.add_argument("--checkpoint", metavar="FILE", help="checkpoint written after every epoch and on Ctrl-C")
    p.add_argument("--resume", metavar="FILE", help="continue training from a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    train_distributed.add_arguments(p)
    p.set_defaults(func=run)


def load_data(args, log=print):
    ds = load_dataset(args.dataset, args.data_dir)
    log(f"dataset: {ds.name} from {ds.source}: {len(ds.x_train)} train / {len(ds.x_test)} test images "
        f"of shape {ds.input_shape}, {ds.num_classes} classes")
    for note in ds.notes:
        log(f"  note: {note}")
    return ds


def write_plot(path, records, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        ax.plot(epochs, [r[f"train_{key}"] for r in records], "o-", label="train")
        if any(r[f"val_{key}"] is not None for r in records):
            ax.plot(epochs, [r[f"val_{key}"] for r in records], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def prepare_outputs(*paths):
    """Create the folders of the output files and check they are writable,
    before any training time is spent."""
    for path in filter(None, paths):
        folder = Path(path).resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"gpucnn train: cannot create the folder of {path}: {exc}") from None
        if not os.access(folder, os.W_OK):
            raise SystemExit(f"gpucnn train: cannot write {path}: folder {folder} is not writable")


def run(args):
    if args.early_stopping is not None and not args.val_split:
        raise SystemExit("gpucnn train: --early-stopping needs a validation split (--val-split > 0)")
    prepare_outputs(args.metrics_out, args.plot, args.checkpoint)
    device = backend.resolve_device(args.device)
    job = train_distributed.setup(args, device)
    ds = load_data(args)
    data = protocol.prepare_data(ds, args.val_split, args.subset, args.seed)
    trainer = protocol.make_trainer(
        args.model, ds.input_shape, ds.num_classes, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, dropout=args.dropout,
        schedule=args.schedule, epochs=args.epochs, warmup=args.warmup, device=device, seed=args.seed)
    train_distributed.wrap_trainer(trainer, job, args)
    start_epoch = 0
    if args.resume:
        resumed = trainer.load_checkpoint(args.resume)
        start_epoch = int(resumed["epoch"])
        train_distributed.check_resume(job, resumed["extra"], args, start_epoch)
        print(f"resumed from {args.resume} after epoch {start_epoch}")
    print(f"model: {args.model}, {sum(p.data.size for p in trainer.model.parameters()):,} parameters; "
          f"optimizer {args.optimizer}; device {device}; {len(data.x_train)} training images"
          + (f", {len(data.x_val)} validation" if data.x_val is not None else ""))

    aug = build_augmentation(args.augment, ds.num_classes, ds.input_shape[-1])
    # seed=None: every epoch's order and augmentation come from the global generator
    # (seeded by make_trainer, restored by --resume), so a resumed run continues
    # exactly as an uninterrupted one would.
    sampler = train_distributed.train_sampler(job, len(data.x_train), args.seed, start_epoch)
    train_loader = DataLoader(data.x_train, data.y_train, args.batch_size, transform=aug, seed=None, sampler=sampler)
    val_loader = DataLoader(*job.shard(data.x_val, data.y_val), 512, shuffle=False) if data.x_val is not None else None
    extra = {"model": args.model, "dataset": ds.name, "world_size": job.size}

    def on_epoch_end(rec):
        if sampler is not None:
            sampler.set_epoch(rec["epoch"])
        print(protocol.epoch_line(rec, args.epochs))
        if args.checkpoint:
            trainer.save_checkpoint(args.checkpoint, rec["epoch"], extra=extra)

    remaining = args.epochs - start_epoch
    try:
        new = trainer.fit(train_loader, val_loader, remaining, early_stopping_patience=args.early_stopping,
                          on_epoch_end=on_epoch_end, progress=not args.no_progress and job.is_main)
    except KeyboardInterrupt:
        path = args.checkpoint or INTERRUPT_CHECKPOINT
        done = trainer.history[-1]["epoch"] if trainer.history else start_epoch
        if job.is_main:
            trainer.save_checkpoint(path, done, extra=extra)
        print(f"\ninterrupted: saved a checkpoint after epoch {done} to {path}; "
              f"continue with --resume {path}", file=sys.stderr)
        return 130
    if len(new) < remaining:
        best = max(trainer.history, key=lambda r: r["val_accuracy"])
        print(f"early stopping: no better val accuracy for {args.early_stopping} epoch(s); "
              f"restored the weights of epoch {best['epoch']}")

    records = [{k: (None if v is None else float(v)) if k != "epoch" else int(v) for k, v in r.items()}
               for r in trainer.history]
    test = trainer.evaluate(DataLoader(*job.shard(data.x_test, data.y_test), 512, shuffle=False))
    print(f"test loss {test['loss']:.4f}  test accuracy {test['accuracy']:.4f}")
    if args.metrics_out:
        metrics = {"dataset": ds.name, "model": args.model, "device": device, "epochs": records,
                   "test_loss": float(test["loss"]), "test_accuracy": float(test["accuracy"]),
                   "data_source": ds.source, "train_images": len(data.x_train),
                   "world_size": job.size, "global_batch_size": args.batch_size * job.size,
                   "settings": {k: v for k, v in vars(args).items() if k != "func"}}
        Path(args.metrics_out).write_text(json.dumps(metrics, indent=2))
        print(f"metrics written to {args.metrics_out}")
    if args.plot:
        write_plot(args.plot, records, f"{args.model} on {ds.name}: test accuracy {test['accuracy']:.4f}")
        print(f"plot written to {args.plot}")
    return 0
