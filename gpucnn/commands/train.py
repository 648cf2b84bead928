"""`gpucnn train`: train a CNN on a dataset, with progress, metrics and a plot.

The default (`gpucnn train`) trains the default model on Fashion-MNIST from
/usr/share/datasets/fashion-mnist, or on scikit-learn's 8x8 digits when that
is missing (it says which). Ctrl-C saves a checkpoint; --resume continues.
"""
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from .. import amp, backend, cuda_graph, inference, models, nn, recipes, serialization
from ..data import AUGMENTATIONS, DATASETS, DataLoader, build_augmentation, load_dataset
from ..trainer import NonFiniteLossError
from .errors import CommandError, RunFailed, fraction, nonnegative_float, nonnegative_int, positive_float, \
    positive_int
from ..monitor import TrainingMonitor, json_safe, plot_monitor
from ..monitor import warnings as monitor_warnings
from . import train_distributed

INTERRUPT_CHECKPOINT = "gpucnn-interrupted.ckpt.npz"


def add_common_arguments(p):
    """Data, model and device arguments shared by `train` and `search`."""
    p.add_argument("--dataset", choices=DATASETS, default="auto",
                   help="auto = Fashion-MNIST if installed, else scikit-learn's 8x8 digits")
    p.add_argument("--data-dir", help="directory of the dataset files, or the .npz file for --dataset npz "
                        "(default: /usr/share/datasets/fashion-mnist for Fashion-MNIST)")
    p.add_argument("--model", choices=models.MODELS, default=models.DEFAULT_MODEL, help="network from the zoo")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs to train (in all, when resuming)")
    p.add_argument("--augment", nargs="*", default=[], choices=AUGMENTATIONS, metavar="AUG",
                   help=f"batch augmentations, in order: {', '.join(AUGMENTATIONS)}")
    p.add_argument("--label-smoothing", type=fraction, default=0.0, help="label smoothing in [0, 1)")
    p.add_argument("--dropout", type=fraction, default=None,
                   help="dropout probability in [0, 1) (default: the model's own)")
    p.add_argument("--val-split", type=fraction, default=0.1,
                   help="fraction of the training set held out for validation, in [0, 1) (0 = none)")
    p.add_argument("--early-stopping", type=positive_int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better val accuracy and restore the best "
                        "weights (default: off)")
    p.add_argument("--subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only (default: all)")
    p.add_argument("--device", choices=backend.DEVICES, default="auto",
                   help="auto = the GPU when CuPy finds a usable one, else the CPU")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the split and the batch order")


def add_optimizer_arguments(p):
    """Batch size and optimizer arguments shared by `train`, `check` and `lr-find`."""
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per mini-batch")
    p.add_argument("--optimizer", choices=recipes.OPTIMIZERS, default="adam", help="update rule")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate > 0 (default: the optimizer's usual value)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="L2 weight decay")


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train a CNN", description=__doc__.splitlines()[0])
    add_common_arguments(p)
    add_optimizer_arguments(p)
    p.add_argument("--schedule", choices=recipes.SCHEDULES, default="none", help="learning-rate schedule")
    p.add_argument("--warmup", type=nonnegative_int, default=0, metavar="EPOCHS",
                   help="linear learning-rate warmup epochs")
    p.add_argument("--metrics-out", metavar="FILE.json",
                   help="write per-epoch metrics, test results and provenance as JSON (default: not written)")
    p.add_argument("--plot", metavar="FILE.png", help="loss and accuracy curves (default: no plot)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="checkpoint written after every epoch and on Ctrl-C (default: only on Ctrl-C, "
                        f"to {INTERRUPT_CHECKPOINT})")
    p.add_argument("--resume", metavar="FILE",
                   help="continue training from a checkpoint of the same model and dataset (default: start fresh)")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (and count) a batch whose loss is NaN/inf instead of stopping (default: stop)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar, one line per epoch only (default: a bar)")
    p.add_argument("--monitor", action="store_true",
                   help="record per-layer health each epoch (update/weight ratios, activations, dead ReLUs, "
                        "gradient norms) into the metrics JSON, with warnings (default: off)")
    p.add_argument("--monitor-plot", metavar="FILE.png",
                   help="plot of the --monitor statistics, implies --monitor (default: no plot)")
    p.add_argument("--precision", choices=amp.PRECISIONS, default="fp32",
                   help="mixed precision (docs/gpu-step.md): float32 master weights; tf32 convolutions, or "
                        "bf16/fp16 conv/pool/linear with batch norm and the loss in float32; fp16 adds "
                        "dynamic loss scaling (default: fp32)")
    p.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto",
                   help="capture the training step once and replay it (docs/gpu-step.md); auto: on the GPU "
                        "when the step can be captured (no dropout, --monitor, --skip-nonfinite, fp16), "
                        "on: required (GPU only), off: never (default: auto)")
    p.add_argument("--fuse", choices=("auto", "on", "off"), default="auto",
                   help="fuse each Conv2d or BatchNorm followed by a ReLU (gpucnn.nn.fuse: one pass fewer, "
                        "the same results; docs/gpu-step.md); auto: on the CPU, off on the GPU until the fused "
                        "kernels have passed a GPU run (default: auto)")
    p.add_argument("--input-pipeline", choices=("auto", "on", "off"), default="auto",
                   help="pinned host buffers and host->device copies on their own stream, overlapping the "
                        "previous step (docs/gpu-step.md); auto: on the GPU, on: required (GPU only), "
                        "off: one copy per batch on the compute stream (default: auto)")
    p.add_argument("--gpu-augment", choices=("auto", "on", "off"), default="auto",
                   help="run the --augment transforms on the GPU, in the input pipeline, with random draws "
                        "made on the GPU (same distributions, other numbers than on the CPU); auto: on the "
                        "GPU with the input pipeline, on: required, off: on the CPU in the loader "
                        "(default: auto)")
    train_distributed.add_arguments(p)
    p.set_defaults(func=run)


def load_data(args, log=print):
    if args.data_dir is not None and not os.path.exists(args.data_dir):
        raise CommandError(f"--data-dir {args.data_dir}: no such file or directory; pass the folder holding "
                           f"the dataset files (the .npz file for --dataset npz)")
    try:
        ds = load_dataset(args.dataset, args.data_dir)
    except (OSError, ValueError) as exc:  # the readers name the file and what they expected
        raise CommandError(f"cannot load dataset {args.dataset!r}: {exc}; check --dataset and --data-dir") from None
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    log(f"dataset: {ds.name} from {ds.source}: {len(ds.x_train)} train / {len(ds.x_test)} test images "
        f"of shape {ds.input_shape}, {ds.num_classes} classes")
    for note in ds.notes:
        log(f"  note: {note}")
    return ds


def make_trainer_from_args(args, ds, device, **schedule):
    """recipes.make_trainer for the model, optimizer and loss options of `args`
    (schedule: make_trainer's schedule/epochs/warmup, for commands that have them)."""
    return recipes.make_trainer(
        args.model, ds.input_shape, ds.num_classes, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, dropout=args.dropout,
        device=device, seed=args.seed, **schedule)


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
        if Path(path).is_dir():
            raise CommandError(f"cannot write {path}: it is a directory; give a file name")
        folder = Path(path).resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"cannot create the folder of {path}: {exc.strerror}; choose another path") from None
        if not os.access(folder, os.W_OK):
            raise CommandError(f"cannot write {path}: folder {folder} is not writable; choose another path")


def split_data(ds, val_split, args):
    """recipes.prepare_data, with a split that leaves a part empty as a user error."""
    try:
        return recipes.prepare_data(ds, val_split, args.subset, args.seed)
    except ValueError as exc:
        raise CommandError(f"cannot split the training set: {exc}; use a larger --subset or a smaller "
                           f"--val-split") from None


def resolve_device(choice):
    try:
        return backend.resolve_device(choice)
    except RuntimeError as exc:  # --device gpu without a usable GPU; says why
        raise CommandError(f"{exc}; use --device cpu (or auto)") from None


def read_resume_checkpoint(args):
    """The --resume checkpoint, read and compared with the arguments before
    anything is built or loaded from it."""
    try:
        state = serialization.read_checkpoint(args.resume)
    except FileNotFoundError:
        raise CommandError(f"--resume {args.resume}: no such file; give a checkpoint written by "
                           f"gpucnn train --checkpoint") from None
    except serialization.SerializationError as exc:
        raise CommandError(f"--resume: {exc}; give a checkpoint written by gpucnn train --checkpoint") from None
    user = _saved_arguments(state)
    if user.get("model") not in (None, args.model):
        raise CommandError(f"--resume {args.resume} holds a {user['model']!r} model, but --model is "
                           f"{args.model!r}; pass --model {user['model']}")
    epoch = int(state["epoch"] or 0)
    if args.epochs <= epoch:
        raise CommandError(f"--resume {args.resume} has already trained {epoch} epoch(s); --epochs counts "
                           f"all epochs, so pass --epochs {epoch + 1} or more")
    return state


def _saved_arguments(state):
    """The {"model", "dataset", ...} a checkpoint was trained with ({} if it does not say)."""
    extra = state.get("extra")
    user = extra.get("user") if isinstance(extra, dict) else None
    return user if isinstance(user, dict) else {}


def check_resume_matches_data(args, state, ds):
    user = _saved_arguments(state)
    if user.get("dataset") not in (None, ds.name):
        raise CommandError(f"--resume {args.resume} was trained on {user['dataset']!r}, but this run loads "
                           f"{ds.name!r}; pass --dataset {user['dataset']} (and its --data-dir)")
    for key, have in (("input_shape", list(ds.input_shape)), ("num_classes", ds.num_classes)):
        if user.get(key) not in (None, have):
            raise CommandError(f"--resume {args.resume} was trained on {key} {user[key]}, but the data has "
                               f"{have}; pass the dataset it was trained on")


def provenance(device, seed, argv):
    """What produced a metrics file: commit, versions, device, seed, command line."""
    import numba
    import numpy as np

    from .. import __version__
    from ..benchmark.env import git_describe
    return {"commit": git_describe(), "device": device, "seed": seed,
            "command_line": shlex.join(["gpucnn", *argv]) if argv is not None else None,
            "versions": {"gpucnn": __version__, "numpy": np.__version__, "numba": numba.__version__,
                         "cupy": getattr(backend.cupy, "__version__", None),
                         "python": platform.python_version()}}


def save_or_fail(what, path, write):
    """Write an output during training; a full disk or a vanished folder stops
    the run with one line (the atomic write leaves the old file intact)."""
    try:
        write()
    except OSError as exc:
        raise RunFailed(f"cannot write the {what} {path}: {exc.strerror or exc}; the previous {what} "
                        f"(if any) is intact; free space or choose another path") from None


def set_cuda_graph(trainer, choice, device):
    """--cuda-graph: 'on' must be possible here (a CommandError saying why not)."""
    if choice == "on":
        reason = "it needs a GPU (the device is cpu)" if device != "gpu" else cuda_graph.eligible(trainer)
        if reason:
            raise CommandError(f"--cuda-graph on: the training step cannot be captured: {reason}; "
                               f"use --cuda-graph auto or off")
    trainer.cuda_graph = {"on": True, "off": False, "auto": "auto"}[choice]
    if choice == "auto" and device == "gpu":
        reason = cuda_graph.eligible(trainer)
        print(f"cuda graph: {'off (' + reason + ')' if reason else 'on (captured after the first batch)'}")


def set_input_pipeline(trainer, args, device):
    """--input-pipeline and --gpu-augment: 'on' must be possible here (a CommandError saying why not)."""
    if device != "gpu":
        for option, choice in (("--input-pipeline", args.input_pipeline), ("--gpu-augment", args.gpu_augment)):
            if choice == "on":
                raise CommandError(f"{option} on: it needs a GPU (the device is cpu); use {option} auto or off")
    if args.gpu_augment == "on" and args.input_pipeline == "off":
        raise CommandError("--gpu-augment on runs the augmentations in the input pipeline; drop "
                           "--input-pipeline off (or use --gpu-augment off)")
    on_off = {"on": True, "off": False, "auto": "auto"}
    trainer.input_pipeline, trainer.gpu_augment = on_off[args.input_pipeline], on_off[args.gpu_augment]
    if device == "gpu":
        pipeline = "on (pinned buffers, copies overlap the previous step)" if trainer.pipeline_on() else "off"
        where = "GPU" if trainer.augment_on_device() else "CPU"
        print(f"input pipeline: {pipeline}" + (f"; augmentations on the {where}" if args.augment else ""))


def run(args):
    if args.early_stopping is not None and not args.val_split:
        raise CommandError("--early-stopping needs a validation split; pass --val-split above 0")
    prepare_outputs(args.metrics_out, args.plot, args.checkpoint, args.monitor_plot)
    device = resolve_device(args.device)
    job = train_distributed.setup(args, device)
    resume_state = read_resume_checkpoint(args) if args.resume else None
    if resume_state is not None:
        train_distributed.check_resume(job, resume_state, args)
    ds = load_data(args)
    if resume_state is not None:
        check_resume_matches_data(args, resume_state, ds)
    data = split_data(ds, args.val_split, args)
    trainer = make_trainer_from_args(args, ds, device, schedule=args.schedule, epochs=args.epochs,
                                     warmup=args.warmup)
    trainer.skip_nonfinite = args.skip_nonfinite
    trainer.set_precision(args.precision)
    train_distributed.wrap_trainer(trainer, job, args)
    if args.fuse == "on" or (args.fuse == "auto" and device == "cpu"):
        nn.fuse(trainer.model)   # after wrap_trainer: SyncBatchNorm layers are left unfused
    start_epoch = 0
    if args.resume:
        try:
            start_epoch = int(trainer.load_checkpoint(args.resume)["epoch"])
        except (ValueError, KeyError) as exc:  # e.g. other layer shapes under the same model name
            raise CommandError(f"--resume {args.resume} does not fit this model: {exc}".replace("\n", " "))
        train_distributed.reseed_after_resume(job, args, start_epoch)
        print(f"resumed from {args.resume} after epoch {start_epoch}")
    print(f"model: {args.model}, {sum(p.data.size for p in trainer.model.parameters()):,} parameters; "
          f"optimizer {args.optimizer}; device {device}; {len(data.x_train)} training images"
          + (f", {len(data.x_val)} validation" if data.x_val is not None else ""))

    aug = build_augmentation(args.augment, ds.num_classes, ds.input_shape[-1])
    # seed=None: every epoch's order and augmentation come from the global generator
    # (seeded by make_trainer, restored by --resume), so a resumed run continues
    # exactly as an uninterrupted one would.
    if args.monitor or args.monitor_plot:
        trainer.monitor = TrainingMonitor(trainer.model)
    set_cuda_graph(trainer, args.cuda_graph, device)
    set_input_pipeline(trainer, args, device)
    sampler = train_distributed.train_sampler(job, len(data.x_train), args.seed, start_epoch)
    train_loader = DataLoader(data.x_train, data.y_train, args.batch_size, transform=aug, seed=None, sampler=sampler)
    val_loader = DataLoader(*job.shard(data.x_val, data.y_val), 512, shuffle=False) if data.x_val is not None else None
    extra = {"model": args.model, "dataset": ds.name, "input_shape": list(ds.input_shape),
             "num_classes": ds.num_classes,  # "inference": what gpucnn.load_model needs
             inference.METADATA_KEY: inference.training_metadata(args.model, ds, data.normalize, args.dropout),
             "world_size": job.size}

    def on_epoch_end(rec):
        if sampler is not None:
            sampler.set_epoch(rec["epoch"])
        print(recipes.epoch_line(rec, args.epochs))
        for line in monitor_warnings(trainer.monitor.history[-1]) if trainer.monitor else ():
            print(f"  warning: {line}")
        if args.checkpoint:
            save_or_fail("checkpoint", args.checkpoint,
                         lambda: trainer.save_checkpoint(args.checkpoint, rec["epoch"], extra=extra))

    remaining = args.epochs - start_epoch
    try:
        new = trainer.fit(train_loader, val_loader, remaining, early_stopping_patience=args.early_stopping,
                          on_epoch_end=on_epoch_end, progress=not args.no_progress and job.is_main)
    except KeyboardInterrupt:
        path = args.checkpoint or INTERRUPT_CHECKPOINT
        done = trainer.history[-1]["epoch"] if trainer.history else start_epoch
        if job.is_main:
            save_or_fail("checkpoint", path, lambda: trainer.save_checkpoint(path, done, extra=extra))
        print(f"\ninterrupted: saved a checkpoint after epoch {done} to {path}; "
              f"continue with --resume {path}", file=sys.stderr)
        return 130
    except NonFiniteLossError as exc:
        last = trainer.history[-1]["epoch"] if trainer.history else start_epoch
        kept = (f"the last good checkpoint (epoch {last}) is {args.checkpoint}" if args.checkpoint and last
                else "no checkpoint was written")
        raise RunFailed(f"{exc}: training stopped; {kept}; lower --lr, or pass --skip-nonfinite "
                        f"to skip such batches") from None
    if trainer.nonfinite_steps:
        print(f"skipped {trainer.nonfinite_steps} batch(es) with a non-finite loss (--skip-nonfinite)")
    if len(new) < remaining:
        best = max(trainer.history, key=lambda r: r["val_accuracy"])
        print(f"early stopping: no better val accuracy for {args.early_stopping} epoch(s); "
              f"restored the weights of epoch {best['epoch']}")
        if args.checkpoint:  # the checkpoint holds the weights the test accuracy below is measured with
            trainer.save_checkpoint(args.checkpoint, trainer.history[-1]["epoch"], extra=extra)

    records = [{k: (None if v is None else float(v)) if k != "epoch" else int(v) for k, v in r.items()}
               for r in trainer.history]
    test = trainer.evaluate(DataLoader(*job.shard(data.x_test, data.y_test), 512, shuffle=False))
    print(f"test loss {test['loss']:.4f}  test accuracy {test['accuracy']:.4f}")
    if args.metrics_out:
        metrics = {"dataset": ds.name, "model": args.model, "device": device, "epochs": records,
                   "test_loss": float(test["loss"]), "test_accuracy": float(test["accuracy"]),
                   "data_source": ds.source, "train_images": len(data.x_train),
                   "nonfinite_steps_skipped": trainer.nonfinite_steps,
                   "world_size": job.size, "global_batch_size": args.batch_size * job.size,
                   "provenance": provenance(device, args.seed, getattr(args, "argv", None)),
                   "settings": {k: v for k, v in vars(args).items() if k not in ("func", "argv")}}
        if trainer.monitor is not None:
            metrics["monitor"] = json_safe(trainer.monitor.history)
        save_or_fail("metrics file", args.metrics_out,
                     lambda: serialization.write_text_atomic(args.metrics_out, json.dumps(metrics, indent=2)))
        print(f"metrics written to {args.metrics_out}")
    if args.plot:
        save_or_fail("plot", args.plot, lambda: write_plot(
            args.plot, records, f"{args.model} on {ds.name}: test accuracy {test['accuracy']:.4f}"))
        print(f"plot written to {args.plot}")
    if args.monitor_plot:
        save_or_fail("monitor plot", args.monitor_plot, lambda: plot_monitor(
            trainer.monitor.history, args.monitor_plot, f"{args.model} on {ds.name}: training health"))
        print(f"monitor plot written to {args.monitor_plot}")
    return 0
