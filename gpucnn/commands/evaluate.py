"""`gpucnn eval`: test loss, accuracy, per-class accuracy and the confusion matrix of a checkpoint.

The test split is that of the dataset recorded in the checkpoint (or
--dataset/--data-dir), normalized with the statistics recorded at training
time, in batches of 512 as training evaluated it: the checkpoint written at the
end of `gpucnn train` gives exactly the test accuracy training reported. The
loss is the plain cross-entropy (training's test loss adds label smoothing
when it was on).
"""
import json
from pathlib import Path

import numpy as np

from .. import backend, nn
from ..data import DATASETS, load_dataset
from ..inference import batch_logits
from . import _checkpoint
from .errors import CommandError

BATCH_SIZE = 512  # the test loader's batch size in `gpucnn train`


def add_parser(subparsers):
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a test set", description=__doc__.splitlines()[0])
    _checkpoint.add_checkpoint_arguments(p)
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the checkpoint's dataset")
    p.add_argument("--data-dir", help="directory of the dataset files, or the .npz file for --dataset npz (default: the one the checkpoint was trained on)")
    p.add_argument("--json", metavar="FILE.json", help="write test_accuracy, test_loss, per_class, confusion_matrix as JSON (default: not written)")
    p.add_argument("--plot", metavar="FILE.png", help="the confusion matrix as a PNG image (default: no plot)")
    p.set_defaults(func=run)


def evaluate(model, x, y, batch_size=BATCH_SIZE):
    """(mean cross-entropy, accuracy, predicted classes) of `model` on normalized x, labels y;
    the loss averaged per sample as Trainer.evaluate does."""
    loss_fn = nn.SoftmaxCrossEntropy()
    loss_sum, predictions = 0.0, []
    for start, logits in batch_logits(model, x, batch_size):
        yb = y[start:start + len(logits)]
        loss, _ = loss_fn(logits, backend.to_gpu(yb) if backend.is_gpu_array(logits) else yb)
        loss_sum += loss * len(yb)
        predictions.append(backend.to_cpu(logits.argmax(axis=1)))
    predicted = np.concatenate(predictions) if predictions else np.zeros(0, np.int64)
    return loss_sum / max(len(y), 1), int((predicted == y).sum()) / max(len(y), 1), predicted


def confusion_matrix(y, predicted, num_classes):
    """counts[true class, predicted class]."""
    return np.bincount(y * num_classes + predicted, minlength=num_classes * num_classes).reshape(num_classes, -1)


def per_class_table(counts, classes):
    rows = []
    for i, name in enumerate(classes):
        support = int(counts[i].sum())
        rows.append({"class_index": i, "class_name": name, "support": support, "correct": int(counts[i, i]),
                     "accuracy": float(counts[i, i] / support) if support else None})
    return rows


def format_table(rows):
    width = max([len("class")] + [len(r["class_name"]) for r in rows])
    lines = [f"{'#':>3}  {'class':<{width}}  {'accuracy':>8}  {'correct':>7}  {'support':>7}"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"{r['class_index']:>3}  {r['class_name']:<{width}}  {acc:>8}  {r['correct']:>7}  {r['support']:>7}")
    return "\n".join(lines)


def write_confusion_plot(path, counts, classes, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(classes)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # each row: where class i went
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.6 + 0.6 * n))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_test_split(args, meta):
    name = args.dataset or meta.dataset
    if not name:
        raise CommandError(f"{args.checkpoint} records no dataset; pass --dataset (and --data-dir)")
    try:
        ds = load_dataset(name, args.data_dir)
    except (FileNotFoundError, ValueError, ImportError, OSError) as exc:
        raise CommandError(f"cannot load dataset {name!r}: {exc}") from exc
    if tuple(ds.input_shape) != tuple(meta.input_shape):
        raise CommandError(f"dataset {ds.name!r} has images of shape {ds.input_shape}, but the model in "
                           f"{args.checkpoint} was trained on {tuple(meta.input_shape)}")
    if ds.num_classes > meta.num_classes:
        raise CommandError(f"dataset {ds.name!r} has {ds.num_classes} classes, the model only {meta.num_classes}")
    return ds


def run(args):
    for path in filter(None, (args.json, args.plot)):
        Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
    model = _checkpoint.load(args)
    meta = model.metadata
    ds = load_test_split(args, meta)
    x, y = meta.normalize.apply(ds.x_test), ds.y_test
    loss, accuracy, predicted = evaluate(model, x, y)
    counts = confusion_matrix(y, predicted, meta.num_classes)
    rows = per_class_table(counts, meta.classes)
    print(f"{meta.model} from {args.checkpoint} on {ds.name} ({len(y)} test images)")
    print(format_table(rows))
    print(f"test loss {loss:.4f}  test accuracy {accuracy:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "checkpoint": str(args.checkpoint), "model": meta.model, "dataset": ds.name, "test_images": len(y),
            "test_accuracy": accuracy, "test_loss": float(loss), "per_class": rows,
            "classes": list(meta.classes), "confusion_matrix": counts.tolist()}, indent=2))
        print(f"metrics written to {args.json}")
    if args.plot:
        write_confusion_plot(args.plot, counts, meta.classes, f"{meta.model} on {ds.name}: accuracy {accuracy:.4f}")
        print(f"confusion matrix written to {args.plot}")
    return 0
