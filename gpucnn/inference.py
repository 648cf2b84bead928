"""Using a trained model: the metadata a checkpoint carries for inference,
`load_model`, and batched eval-mode forward passes.

`gpucnn train --checkpoint F` stores, beside the weights, a metadata dict
(checkpoint['extra']['user']['inference']; see `training_metadata`):

    {"version": 1,
     "model": "lenet_bn",                        zoo name (gpucnn.models.build)
     "model_args": {"in_channels": 1, "num_classes": 10, "image_size": 28, "dropout": None},
     "input_shape": [1, 28, 28],                 (C, H, W) of one training image
     "classes": ["T-shirt/top", ...],            class names, index order
     "dataset": "fashion-mnist",
     "normalize": {"mean": float32 (C,), "std": float32 (C,)}}
                                                 Normalize's statistics, std with its eps added

`load_model(path)` rebuilds the model from it, loads the weights and returns
the model in eval mode, with a `ModelMetadata` as `model.metadata`. Inputs
are images scaled to [0, 1] as the datasets scale them (8-bit pixels / 255),
then `model.metadata.normalize` (per channel (x - mean) / std), exactly as
recipes.prepare_data did for training.
"""
from dataclasses import dataclass

import numpy as np

from . import backend, models, serialization
from .data import Normalize
from .nn.module import no_grad

METADATA_KEY = "inference"
METADATA_VERSION = 1
# key -> what it is, for the error about an old checkpoint
REQUIRED = {"model": "model name", "model_args": "model constructor arguments",
            "input_shape": "input shape and channel count", "classes": "class names",
            "normalize": "normalization statistics"}


class MissingMetadataError(serialization.SerializationError):
    """A checkpoint without (complete) inference metadata."""


@dataclass(frozen=True)
class ModelMetadata:
    model: str
    model_args: dict
    input_shape: tuple   # (C, H, W)
    classes: tuple
    normalize: Normalize
    dataset: str = ""

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def channels(self):
        return self.input_shape[0]

    def to_dict(self):
        return {"version": METADATA_VERSION, "model": self.model, "model_args": dict(self.model_args),
                "input_shape": [int(d) for d in self.input_shape], "classes": list(self.classes),
                "dataset": self.dataset,
                "normalize": {"mean": self.normalize.mean.ravel().copy(),
                              "std": self.normalize.std.ravel().copy()}}

    @classmethod
    def from_dict(cls, meta, source="metadata"):
        missing = [f"{what} ({key!r})" for key, what in REQUIRED.items() if key not in (meta or {})]
        if missing:
            raise MissingMetadataError(f"{source}: no inference metadata: missing {', '.join(missing)}; "
                                       f"it was written without them (an older gpucnn, or save_checkpoint "
                                       f"without metadata). Re-train with `gpucnn train --checkpoint FILE`, "
                                       f"or write one with gpucnn.inference.save_model(model, path, metadata)")
        norm = meta["normalize"]
        # std already holds Normalize's eps: eps=0 gives back the same float32 numbers
        normalize = Normalize(np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32), eps=0.0)
        return cls(meta["model"], dict(meta["model_args"]), tuple(int(d) for d in meta["input_shape"]),
                   tuple(str(c) for c in meta["classes"]), normalize, str(meta.get("dataset", "")))


def training_metadata(model_name, dataset, normalize, dropout=None):
    """The metadata dict for a zoo model trained on `dataset` (a gpucnn.data.Dataset)
    with inputs normalized by `normalize` (recipes.prepare_data's Normalize)."""
    c, h, _ = dataset.input_shape
    args = {"in_channels": int(c), "num_classes": dataset.num_classes, "image_size": int(h), "dropout": dropout}
    return ModelMetadata(model_name, args, tuple(dataset.input_shape), tuple(dataset.classes), normalize,
                         dataset.name).to_dict()


def find_metadata(checkpoint):
    """The metadata dict inside a loaded checkpoint, or None."""
    extra = checkpoint.get("extra")
    if not isinstance(extra, dict):
        return None
    user = extra.get("user")
    if isinstance(user, dict) and METADATA_KEY in user:
        return user[METADATA_KEY]
    return extra.get(METADATA_KEY)


def save_model(model, path, metadata):
    """A checkpoint `load_model` reads: the weights and `metadata` (a ModelMetadata or its dict)."""
    meta = metadata.to_dict() if isinstance(metadata, ModelMetadata) else metadata
    ModelMetadata.from_dict(meta)  # refuse incomplete metadata now, not at load time
    serialization.save_checkpoint(path, model, extra={METADATA_KEY: meta})


def load_model(path, device="cpu"):
    """The model of a checkpoint, in eval mode on `device`, with `model.metadata`
    (a ModelMetadata). A checkpoint without metadata raises MissingMetadataError
    naming what is missing; a file that is no checkpoint raises SerializationError."""
    state = serialization.load(path)
    if state.get("format") != serialization.CHECKPOINT_FORMAT:
        raise serialization.SerializationError(f"gpucnn.load_model: {str(path)!r} is not a training checkpoint "
                                               f"(a plain state dict? it holds no model description)")
    meta = ModelMetadata.from_dict(find_metadata(state), f"gpucnn.load_model: {str(path)!r}")
    model = models.build(meta.model, **meta.model_args)
    model.load_state_dict(state["model"])
    if backend.resolve_device(device) == "gpu":
        model.to_gpu()
    model.eval()
    model.metadata = meta
    return model


def batch_logits(model, x, batch_size=512):
    """Yield (start, logits) over `x` in batches, in eval mode under no_grad;
    each batch is cast to the model's float dtype and moved to its device
    (as Trainer does), the logits stay there."""
    params = model.parameters()
    on_gpu = bool(params) and backend.is_gpu_array(params[0].data)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, len(x), batch_size):
                xb = x[start:start + batch_size]
                if params and np.dtype(xb.dtype).kind == "f":
                    xb = xb.astype(params[0].data.dtype, copy=False)
                yield start, model(backend.to_gpu(xb) if on_gpu else np.asarray(xb))
    finally:
        model.train(was_training)
