"""The model zoo: small CNNs for 28x28 (MNIST family), 32x32 (CIFAR-10) and
8x8 (scikit-learn digits) images, built with gpucnn.nn layers.

    build(name, in_channels, num_classes, image_size, dropout=None)

- lenet5: LeNet-5 style (5x5 convolutions with 6 and 16 channels, max
  pooling, dense 120-84), with ReLU; the classic layout, modernized.
- lenet_bn (the default): the same two-conv LeNet layout, wider (32 and 64
  channels, a 128-unit dense layer), with 3x3 kernels (a third of the 5x5
  cost on the CPU), batch norm after each convolution and dropout before the
  classifier; sized to pass 90% test accuracy on Fashion-MNIST in a few CPU
  epochs.
- vgg_small: VGG-style stacks of two 3x3 convolutions with batch norm and
  ReLU, then a 2x2 max pool, three stages (32, 64, 128 channels).
- resnet_small: a stem convolution, then three stages of one basic residual
  block each (16, 32, 64 channels; stride 2 and a 1x1 projection when the
  shape changes), global average pooling (AdaptiveAvgPool2d(1), as modern
  ResNet heads) and a linear classifier. The head has no parameters, so the
  parameter count is unchanged from the earlier fixed AvgPool2d(size) head
  and any input size works; state dicts stay compatible.
- mobilenet_small: MobileNet-style depthwise-separable blocks (a 3x3
  depthwise conv, groups = channels, then a 1x1 pointwise conv, each with
  batch norm and ReLU) after a 3x3 stem: 16 -> 32 -> 64 (stride 2) -> 64 ->
  128 (stride 2) -> 128 channels, global average pooling, a linear classifier
  (36,874 parameters for 1x28x28 inputs).
Spatial sizes are tracked as the layers are built, so every model adapts its
dense layer to the input size; all convolutions keep the size ("same"
padding) and each max pool halves it.
"""
from . import nn
from .functional import output_size

MODELS = ("lenet5", "lenet_bn", "vgg_small", "resnet_small", "mobilenet_small")
DEFAULT_MODEL = "lenet_bn"


def _conv_block(c_in, c_out, k, batch_norm):
    layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=not batch_norm)]
    if batch_norm:  # the BN shift makes a conv bias redundant
        layers.append(nn.BatchNorm2d(c_out))
    return layers + [nn.ReLU()]


def _pool_if_possible(size):
    """A 2x2 max pool while the image is at least 4 pixels wide (8x8 digits stop at 2x2)."""
    return ([nn.MaxPool2d(2)], output_size(size, 2, 2, 0)) if size >= 4 else ([], size)


def _lenet(in_channels, num_classes, image_size, channels, hidden, kernel, batch_norm, dropout):
    layers, c, size = [], in_channels, image_size
    for c_out in channels:
        layers += _conv_block(c, c_out, kernel, batch_norm)
        pool, size = _pool_if_possible(size)
        layers += pool
        c = c_out
    layers.append(nn.Flatten())
    features = c * size * size
    for h in hidden:
        layers += [nn.Linear(features, h), nn.ReLU()]
        features = h
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def lenet5(in_channels=1, num_classes=10, image_size=28, dropout=None):
    return _lenet(in_channels, num_classes, image_size, (6, 16), (120, 84), 5, False, dropout or 0.0)


def lenet_bn(in_channels=1, num_classes=10, image_size=28, dropout=None):
    return _lenet(in_channels, num_classes, image_size, (32, 64), (128,), 3, True,
                  0.3 if dropout is None else dropout)


def vgg_small(in_channels=1, num_classes=10, image_size=28, dropout=None):
    layers, c, size = [], in_channels, image_size
    for c_out in (32, 64, 128):
        layers += _conv_block(c, c_out, 3, True) + _conv_block(c_out, c_out, 3, True)
        pool, size = _pool_if_possible(size)
        layers += pool
        c = c_out
    layers += [nn.Flatten(), nn.Linear(c * size * size, 256), nn.ReLU(),
               nn.Dropout(0.5 if dropout is None else dropout), nn.Linear(256, num_classes)]
    return nn.Sequential(*layers)


def _basic_block(c_in, c_out, stride):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the input (projected by a strided
    1x1 conv + BN when channels or size change), then ReLU."""
    body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
    projection = None
    if stride != 1 or c_in != c_out:
        projection = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
    return [nn.Residual(body, projection), nn.ReLU()]


def resnet_small(in_channels=1, num_classes=10, image_size=28, dropout=None):
    layers, c, size = _conv_block(in_channels, 16, 3, True), 16, image_size
    for c_out, stride in ((16, 1), (32, 2), (64, 2)):
        stride = stride if size >= 4 else 1
        layers += _basic_block(c, c_out, stride)
        size = output_size(size, 3, stride, 1)
        c = c_out
    return nn.Sequential(*(layers + _global_pool_head(c, num_classes, dropout)))


def _global_pool_head(c, num_classes, dropout):
    layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # global average pooling
    if dropout:
        layers.append(nn.Dropout(dropout))
    return layers + [nn.Linear(c, num_classes)]


def _depthwise_separable(c_in, c_out, stride):
    """3x3 depthwise conv (one filter per channel: groups = c_in) - BN - ReLU,
    then a 1x1 pointwise conv mixing the channels - BN - ReLU."""
    return [nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in), nn.ReLU()] + _conv_block(c_in, c_out, 1, True)


def mobilenet_small(in_channels=1, num_classes=10, image_size=28, dropout=None):
    layers, c, size = _conv_block(in_channels, 16, 3, True), 16, image_size
    for c_out, stride in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        stride = stride if size >= 4 else 1
        layers += _depthwise_separable(c, c_out, stride)
        size = output_size(size, 3, stride, 1)
        c = c_out
    return nn.Sequential(*(layers + _global_pool_head(c, num_classes, dropout)))


_BUILDERS = {"lenet5": lenet5, "lenet_bn": lenet_bn, "vgg_small": vgg_small, "resnet_small": resnet_small,
             "mobilenet_small": mobilenet_small}


def build(name, in_channels=1, num_classes=10, image_size=28, dropout=None):
    """A model from MODELS for (in_channels, image_size, image_size) inputs."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    return _BUILDERS[name](in_channels, num_classes, image_size, dropout=dropout)
