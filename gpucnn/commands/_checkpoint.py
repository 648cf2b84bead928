"""Loading a checkpoint's model for the `eval`, `predict` and `export` commands."""
from .. import backend, inference, serialization
from .errors import CommandError


def add_checkpoint_arguments(p):
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a checkpoint written by `gpucnn train --checkpoint FILE`")
    p.add_argument("--device", choices=backend.DEVICES, default="auto",
                   help="auto = the GPU when CuPy finds a usable one, else the CPU")


def load(args):
    """The checkpoint's model (eval mode, model.metadata) on the chosen device;
    file problems become one-line CommandErrors naming the file."""
    try:
        device = backend.resolve_device(args.device)
        return inference.load_model(args.checkpoint, device=device)
    except inference.MissingMetadataError as exc:
        raise CommandError(str(exc)) from exc
    except (FileNotFoundError, serialization.SerializationError, RuntimeError) as exc:
        raise CommandError(f"{exc}") from exc
    except ValueError as exc:  # load_state_dict: weights that do not fit the recorded model
        raise CommandError(f"{args.checkpoint}: the weights do not fit the recorded model: "
                           f"{str(exc).splitlines()[0]}") from exc
