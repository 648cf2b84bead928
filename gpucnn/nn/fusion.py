"""Layer fusion, in the spirit of torch.ao.quantization.fuse_modules (issue 11).

    gpucnn.nn.fuse(model)     -> model, every fusable pair inside a Sequential fused (in place)
    gpucnn.nn.unfuse(model)   -> model, every fusion undone

A pair is a Conv2d, BatchNorm1d or BatchNorm2d directly followed by a ReLU
in the same Sequential (conv-ReLU, and the conv-BN-ReLU blocks of
gpucnn.models). Fusing sets the first layer's `fused_relu` (it then applies
the ReLU as it writes its output and folds ReLU's backward into its own,
in training and eval) and the ReLU's `fused` (it passes values and gradients
through). Classes, parameters, state_dict keys and results stay the same:
the outputs bitwise, the gradients bitwise or within float32 rounding (a conv
bias gradient summed in another order). A ReLU instance used more than once
in the model is left alone (its other uses need the real ReLU).
"""
from collections import Counter

from .activation import ReLU
from .conv import Conv2d
from .module import Sequential
from .norm import BatchNorm1d, BatchNorm2d

FUSABLE = (Conv2d, BatchNorm1d, BatchNorm2d)   # exact types: subclasses may have their own forward


def _pairs(model):
    """(layer, relu) for each fusable, not yet fused pair of the model."""
    uses = Counter(id(child) for _, m in model.named_modules() for child in m._modules.values())
    for _, module in model.named_modules():
        if isinstance(module, Sequential):
            layers = list(module)
            for first, second in zip(layers, layers[1:]):
                if type(first) in FUSABLE and type(second) is ReLU and uses[id(second)] == 1 \
                        and not first.fused_relu and not second.fused:
                    yield first, second


def fuse(model):
    """Fuse every Conv2d/BatchNorm + ReLU pair of the model (in place); returns it."""
    for layer, relu in list(_pairs(model)):
        layer.fused_relu = True
        relu.fused = True
    return model


def unfuse(model):
    """Undo fuse (in place); returns the model."""
    for _, module in model.named_modules():
        if module.__dict__.get("fused_relu"):
            module.fused_relu = False
        if module.__dict__.get("fused"):
            module.fused = False
    return model
