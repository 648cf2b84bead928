"""Benchmark shape suites: the layers of a few standard networks.

A case is one layer geometry. Conv cases are timed for the forward, the
backward-data and the backward-filter; pool cases for max and average pooling,
forward and backward (ops.OPS). Notation: N batch, C input channels,
spatial (H, W) (or (L,) / (D, H, W)), K output channels, kernel (R, S),
stride, padding P.

Suites
- lenet:    LeNet-5 on 28x28 Fashion-MNIST (pad 2 on the first conv), N=256.
- airbench: airbench94's CIFAR-10 net at N=1024 (a 2x2 whitening conv, then
            3x3 pad-1 convs and 2x2 max-pools; the last pool is 3x3/3).
- resnet50: every distinct ResNet-50 conv geometry class at N=64: the 7x7/2
            stem, the 3x3 and 1x1 bottleneck convs of each stage, the two
            stride-2 downsampling convs, and the 3x3/2 pad-1 stem max-pool.
- convnet:  convnet-benchmarks L1-L5 (soumith/convnet-benchmarks) at N=128,
            stride 1, no padding.
- nd:       1-D and 3-D convs and pools (sequence and video-like shapes).
- mobilenet: MobileNet-v1 style depthwise-separable layers at N=64 (3x3
            depthwise convs, groups = C, stride 1 and 2, and their 1x1
            pointwise convs), 112x112 down to 7x7.
- dilated:  dilated (atrous) 3x3 convs at N=16, DeepLab-style (dilation 2,
            4, 8 with 'same'-size padding, 1-D dilation 2 and 3-D dilation 2).
- quick:    small N, a few shapes of every kind (2-D, 1-D, 3-D, stride 2,
            padding, overlapping pools); runs on the CPU in seconds (CI).
- full:     lenet + airbench + resnet50 + convnet + nd + mobilenet + dilated
            (meant for a GPU).
"""
import math
from dataclasses import dataclass

from ..functional._args import output_shape


@dataclass(frozen=True)
class Case:
    """One layer geometry. For pools, k == c and kernel is the window."""
    name: str
    family: str          # "conv" or "pool"
    n: int
    c: int
    spatial: tuple
    k: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple = None   # None = 1 in every dimension
    groups: int = 1

    @property
    def dil(self):
        return self.dilation or (1,) * self.nd

    @property
    def nd(self):
        return len(self.spatial)

    @property
    def x_shape(self):
        return (self.n, self.c) + self.spatial

    @property
    def w_shape(self):
        return (self.k, self.c // self.groups) + self.kernel

    @property
    def y_shape(self):
        return (self.n, self.k) + output_shape(self.spatial, self.kernel, self.stride, self.padding,
                                               self.dil)

    def conv_flops(self):
        """2*N*K*(C/groups)*R*S*Ho*Wo: one multiply and one add per filter tap
        and output element; the same count holds for each of the three directions."""
        out = self.y_shape[2:]
        return 2 * self.n * self.k * (self.c // self.groups) * math.prod(self.kernel) * math.prod(out)

    def describe(self):
        """A one-line geometry, e.g. 'N64 C256@14x14 -> K256 3x3 s1 p1'."""
        sp = "x".join(map(str, self.spatial))
        ker = "x".join(map(str, self.kernel))
        st = _short(self.stride)
        pd = _short(self.padding)
        if self.family == "conv":
            extra = (f" d{_short(self.dil)}" if self.dilation else "") + (f" g{self.groups}" if self.groups > 1 else "")
            return f"N{self.n} C{self.c}@{sp} -> K{self.k} {ker} s{st} p{pd}{extra}"
        return f"N{self.n} C{self.c}@{sp} pool {ker} s{st} p{pd}"

    def as_dict(self):
        return {"family": self.family, "nd": self.nd, "x_shape": list(self.x_shape),
                "w_shape": list(self.w_shape) if self.family == "conv" else None,
                "y_shape": list(self.y_shape), "kernel": list(self.kernel),
                "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dil), "groups": self.groups}


def _short(t):
    return str(t[0]) if len(set(t)) == 1 else ",".join(map(str, t))


def _tup(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def conv(name, n, c, spatial, k, kernel, stride=1, padding=0, dilation=1, groups=1):
    spatial = _tup(spatial, 2) if isinstance(spatial, int) else tuple(spatial)
    nd = len(spatial)
    dilation = None if dilation == 1 else _tup(dilation, nd)
    return Case(name, "conv", n, c, spatial, k, _tup(kernel, nd), _tup(stride, nd), _tup(padding, nd),
                dilation, groups)


def pool(name, n, c, spatial, kernel, stride=None, padding=0):
    spatial = _tup(spatial, 2) if isinstance(spatial, int) else tuple(spatial)
    nd = len(spatial)
    kernel = _tup(kernel, nd)
    stride = kernel if stride is None else _tup(stride, nd)
    return Case(name, "pool", n, c, spatial, c, kernel, stride, _tup(padding, nd))


def _lenet(n=256):
    return [conv("lenet/conv1", n, 1, 28, 6, 5, padding=2),
            pool("lenet/pool1", n, 6, 28, 2),
            conv("lenet/conv2", n, 6, 14, 16, 5),
            pool("lenet/pool2", n, 16, 10, 2)]


def _airbench(n=1024):
    return [conv("airbench/whiten", n, 3, 32, 24, 2),
            conv("airbench/conv1", n, 24, 31, 64, 3, padding=1),
            pool("airbench/pool1", n, 64, 31, 2),
            conv("airbench/conv2", n, 64, 15, 64, 3, padding=1),
            conv("airbench/conv3", n, 64, 15, 256, 3, padding=1),
            pool("airbench/pool2", n, 256, 15, 2),
            conv("airbench/conv4", n, 256, 7, 256, 3, padding=1),
            pool("airbench/pool3", n, 256, 7, 2),
            conv("airbench/conv5", n, 256, 3, 256, 3, padding=1),
            pool("airbench/pool4", n, 256, 3, 3)]


def _resnet50(n=64):
    return [conv("resnet50/stem7x7", n, 3, 224, 64, 7, stride=2, padding=3),
            pool("resnet50/stempool", n, 64, 112, 3, stride=2, padding=1),
            conv("resnet50/3x3_64@56", n, 64, 56, 64, 3, padding=1),
            conv("resnet50/3x3_128@28", n, 128, 28, 128, 3, padding=1),
            conv("resnet50/3x3_256@14", n, 256, 14, 256, 3, padding=1),
            conv("resnet50/3x3_512@7", n, 512, 7, 512, 3, padding=1),
            conv("resnet50/1x1_64-256@56", n, 64, 56, 256, 1),
            conv("resnet50/1x1_256-64@56", n, 256, 56, 64, 1),
            conv("resnet50/1x1_512-128@28", n, 512, 28, 128, 1),
            conv("resnet50/1x1_1024-256@14", n, 1024, 14, 256, 1),
            conv("resnet50/1x1_2048-512@7", n, 2048, 7, 512, 1),
            conv("resnet50/1x1s2_256-512@56", n, 256, 56, 512, 1, stride=2),
            conv("resnet50/3x3s2_128@56", n, 128, 56, 128, 3, stride=2, padding=1)]


def _convnet(n=128):
    return [conv("convnet/L1", n, 3, 128, 96, 11),
            conv("convnet/L2", n, 64, 64, 128, 9),
            conv("convnet/L3", n, 128, 32, 128, 9),
            conv("convnet/L4", n, 128, 16, 128, 7),
            conv("convnet/L5", n, 384, 13, 384, 3)]


def _nd():
    return [conv("nd/conv1d_audio", 32, 64, (4096,), 64, 9, padding=4),
            conv("nd/conv1d_s2", 32, 128, (2048,), 256, 3, stride=2, padding=1),
            pool("nd/maxpool1d", 32, 64, (4096,), 3, stride=2, padding=1),
            conv("nd/conv3d_c3d", 8, 64, (8, 28, 28), 128, 3, padding=1),
            conv("nd/conv3d_stem", 8, 3, (16, 56, 56), 32, 3, stride=(1, 2, 2), padding=1),
            pool("nd/pool3d_2", 8, 64, (16, 28, 28), 2),
            pool("nd/pool3d_3s2", 8, 64, (8, 28, 28), 3, stride=2, padding=1)]


def _mobilenet(n=64):
    """MobileNet-v1's depthwise (dw) and pointwise (pw) layer pairs, one per size."""
    cases = []
    for c, k, size, stride in ((32, 64, 112, 1), (64, 128, 112, 2), (128, 128, 56, 1), (128, 256, 56, 2),
                               (256, 256, 28, 1), (512, 512, 14, 1), (512, 1024, 14, 2), (1024, 1024, 7, 1)):
        out = output_shape((size, size), (3, 3), (stride, stride), (1, 1))[0]
        cases += [conv(f"mobilenet/dw{c}s{stride}@{size}", n, c, size, c, 3, stride=stride, padding=1, groups=c),
                  conv(f"mobilenet/pw{c}-{k}@{out}", n, c, out, k, 1)]
    return cases


def _dilated(n=16):
    """Atrous 3x3 convs keeping the size (padding = dilation), as in DeepLab's ASPP."""
    return [conv("dilated/3x3d2_256@33", n, 256, 33, 256, 3, padding=2, dilation=2),
            conv("dilated/3x3d4_256@33", n, 256, 33, 256, 3, padding=4, dilation=4),
            conv("dilated/3x3d8_512@17", n, 512, 17, 256, 3, padding=8, dilation=8),
            conv("dilated/3x3d2_64@64", n, 64, 64, 64, 3, padding=2, dilation=2),
            conv("dilated/conv1d_d2", n, 64, (2048,), 64, 3, padding=2, dilation=2),
            conv("dilated/conv3d_d2", 4, 32, (8, 28, 28), 32, 3, padding=2, dilation=2)]


def _quick():
    """Each op a few milliseconds on one CPU core: large enough that the
    kernels, not the per-call overhead, dominate; small enough for CI."""
    return [conv("quick/lenet_conv1", 32, 1, 28, 6, 5, padding=2),
            conv("quick/lenet_conv2", 32, 6, 14, 16, 5),
            conv("quick/3x3_p1", 8, 32, 16, 32, 3, padding=1),
            conv("quick/1x1_s2", 8, 64, 16, 128, 1, stride=2),
            pool("quick/pool2x2", 32, 16, 28, 2),
            pool("quick/pool3x3s2p1", 8, 32, 17, 3, stride=2, padding=1),
            conv("quick/conv1d", 8, 16, (256,), 32, 5, padding=2),
            pool("quick/maxpool1d", 8, 16, (512,), 3, stride=2, padding=1),
            conv("quick/conv3d", 2, 8, (8, 12, 12), 16, 3, padding=1),
            pool("quick/pool3d", 2, 8, (8, 12, 12), 2),
            conv("quick/depthwise3x3", 8, 32, 16, 32, 3, padding=1, groups=32),
            conv("quick/dilated3x3", 8, 16, 16, 16, 3, padding=2, dilation=2)]


_BUILDERS = {"quick": _quick, "lenet": _lenet, "airbench": _airbench,
             "resnet50": _resnet50, "convnet": _convnet, "nd": _nd, "mobilenet": _mobilenet,
             "dilated": _dilated}
SUITES = ("quick", "full", "lenet", "airbench", "resnet50", "convnet", "nd", "mobilenet", "dilated")


def get_suite(name):
    """The list of Cases of a suite ('full' = every suite but 'quick')."""
    if name == "full":
        return [c for key in ("lenet", "airbench", "resnet50", "convnet", "nd", "mobilenet", "dilated")
                for c in _BUILDERS[key]()]
    if name not in _BUILDERS:
        raise ValueError(f"unknown suite {name!r}; choose one of {SUITES}")
    return _BUILDERS[name]()
