"""`gpucnn export`: a checkpoint's model as ONNX (and/or its weights as .safetensors).

The ONNX graph takes normalized inputs (N, C, H, W), float32, batch size
free; normalize images with the mean/std printed here (recorded at training
time) first. Its output is the logits (apply softmax for probabilities).
"""
from .. import onnx, serialization
from . import _checkpoint
from .errors import CommandError


def add_parser(subparsers):
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX / safetensors",
                              description=__doc__.splitlines()[0])
    _checkpoint.add_checkpoint_arguments(p)
    p.add_argument("--onnx", metavar="OUT.onnx", help="write the model as an ONNX graph (default: not written)")
    p.add_argument("--opset", type=int, default=onnx.DEFAULT_OPSET, help=f"ONNX opset (default {onnx.DEFAULT_OPSET})")
    p.add_argument("--safetensors", metavar="OUT.safetensors", help="write the state dict with PyTorch's key names (default: not written)")
    p.set_defaults(func=run, device="cpu")


def run(args):
    if not (args.onnx or args.safetensors):
        raise CommandError("nothing to do: pass --onnx OUT.onnx and/or --safetensors OUT.safetensors")
    model = _checkpoint.load(args)
    meta = model.metadata
    norm = meta.normalize
    if args.onnx:
        import numpy as np
        try:
            onnx.export(model, np.zeros((1,) + tuple(meta.input_shape), np.float32), args.onnx, opset=args.opset)
        except ImportError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot write {args.onnx}: {exc}") from exc
        print(f"ONNX model written to {args.onnx} (opset {args.opset}): input 'input' (N, "
              f"{', '.join(map(str, meta.input_shape))}) float32, output 'output' (N, {meta.num_classes}) logits")
        print(f"  inputs: images scaled to [0, 1], then (x - mean) / std per channel with "
              f"mean={norm.mean.ravel().tolist()} std={norm.std.ravel().tolist()}")
        print(f"  classes: {', '.join(meta.classes)}")
    if args.safetensors:
        try:
            serialization.save(model.state_dict(), args.safetensors, format="safetensors")
        except ImportError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot write {args.safetensors}: {exc}") from exc
        print(f"weights written to {args.safetensors}")
    return 0
