"""`gpucnn predict`: classify image files (PNG, JPEG, .npy) with a checkpoint.

Each file is read as gpucnn.image_files documents (converted to the training
channels, resized to the training size, 8-bit pixels / 255), normalized with
the training statistics recorded in the checkpoint, and classified in eval
mode; one line per file with the top classes and their probabilities. A file
that cannot be read is reported (naming it) and skipped; the others are still
predicted, and the exit status is then 1.
"""
import json
import sys
from pathlib import Path

import numpy as np

from .. import backend
from ..image_files import MissingPillowError, read_image
from ..inference import batch_logits
from ..nn.loss import softmax
from . import _checkpoint
from .errors import CommandError

EXIT_SOME_FAILED = 1


def add_parser(subparsers):
    p = subparsers.add_parser("predict", help="classify image files with a checkpoint",
                              description=__doc__.splitlines()[0])
    _checkpoint.add_checkpoint_arguments(p)
    p.add_argument("--top", type=int, default=3, metavar="K", help="classes listed per file (default 3)")
    p.add_argument("--json", metavar="FILE.json", help='write {"predictions": [...]} (and "errors") as JSON (default: not written)')
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG (gpucnn[images]) or .npy files")
    p.set_defaults(func=run)


def predict_proba(model, images, batch_size=512):
    """Softmax probabilities (NumPy, (N, classes)) for (N, C, H, W) images in [0, 1]."""
    x = model.metadata.normalize.apply(images)
    return np.concatenate([backend.to_cpu(softmax(logits, axis=1)) for _, logits in batch_logits(model, x, batch_size)])


def top_classes(probabilities, classes, k):
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"class_index": int(i), "class_name": classes[i], "probability": float(probabilities[i])} for i in order]


def run(args):
    if args.top < 1:
        raise CommandError(f"--top must be at least 1, got {args.top}")
    model = _checkpoint.load(args)
    meta = model.metadata
    images, files, errors = [], [], []
    for path in args.images:
        try:
            images.append(read_image(path, meta.input_shape))
            files.append(path)
        except MissingPillowError as exc:
            raise CommandError(f"{path}: {exc}") from exc
        except ValueError as exc:
            errors.append({"file": path, "error": str(exc)})
            print(f"gpucnn predict: error: {exc}", file=sys.stderr)
    predictions = []
    if images:
        k = min(args.top, meta.num_classes)
        for path, p in zip(files, predict_proba(model, np.stack(images))):
            top = top_classes(p, meta.classes, k)
            predictions.append({"file": path, **top[0], "top": top})
            print(f"{path}: " + ", ".join(f"{t['class_name']} {t['probability']:.4f}" for t in top))
    if args.json:
        Path(args.json).resolve().parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"predictions": predictions, "errors": errors}, indent=2))
    if errors:
        print(f"gpucnn predict: {len(errors)} of {len(args.images)} file(s) failed", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
