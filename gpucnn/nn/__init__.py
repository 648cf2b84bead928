"""Layers, containers, losses and initializers (the layer contract:
docs/design.md).

Every layer is array code over NumPy or CuPy (the module comes from
gpucnn.backend.get_array_module); conv and pooling call gpucnn.functional.
Status: checked on the CPU (float64 gradient checks, PyTorch comparisons)
and on an H100 (every layer's forward and backward against the CPU path).
"""
from . import init
from .activation import ELU, LeakyReLU, Maxout, ReLU, Sigmoid, Tanh
from .conv import Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .dropout import Dropout
from .fusion import fuse, unfuse
from .linear import Flatten, Linear
from .loss import MSELoss, SoftmaxCrossEntropy, softmax
from .module import Module, Parameter, Residual, Sequential, forward_hook, is_grad_enabled, no_grad
from .norm import BatchNorm1d, BatchNorm2d
from .pool import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AdaptiveMaxPool1d,
                   AdaptiveMaxPool2d, AdaptiveMaxPool3d, AvgPool1d, AvgPool2d, AvgPool3d, MaxPool1d,
                   MaxPool2d, MaxPool3d)
from .sync_batchnorm import SyncBatchNorm

__all__ = ["ELU", "AvgPool1d", "AvgPool2d", "AvgPool3d", "BatchNorm1d", "BatchNorm2d", "Conv1d", "Conv2d",
           "Conv3d", "Dropout", "Flatten", "LeakyReLU", "Linear", "MSELoss", "MaxPool1d", "MaxPool2d", "MaxPool3d",
           "Maxout", "Module", "Parameter", "ReLU", "Residual", "Sequential", "Sigmoid", "SoftmaxCrossEntropy",
           "Tanh", "forward_hook", "fuse", "unfuse", "init", "is_grad_enabled", "no_grad", "softmax",
           "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
           "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
           "SyncBatchNorm"]
