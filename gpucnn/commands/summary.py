"""`gpucnn summary`: print a model's layers, output shapes and parameter counts."""
from .. import models
from .errors import CommandError, positive_int


def add_parser(subparsers):
    p = subparsers.add_parser("summary", help="print a model summary", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=models.MODELS, default=models.DEFAULT_MODEL, help="network from the zoo")
    p.add_argument("--dataset-shape", type=positive_int, nargs=3, default=(1, 28, 28), metavar=("C", "H", "W"),
                   help="input shape of one image (default 1 28 28; CIFAR-10: 3 32 32)")
    p.add_argument("--num-classes", type=positive_int, default=10, help="classes of the output layer")
    p.set_defaults(func=run)


def run(args):
    from ..summary import summary
    c, h, w = args.dataset_shape
    if h != w:
        raise CommandError(f"the models take square images, got {h}x{w}; pass --dataset-shape C N N")
    model = models.build(args.model, c, args.num_classes, h)
    print(summary(model, (c, h, w)))
    return 0
