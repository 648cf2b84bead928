"""End to end: the time of one training step of a model, and images/s.

A step is forward, softmax cross-entropy, backward and an SGD update
(momentum 0.9), on a fixed random batch (the data pipeline is not timed).
It is timed with the wall clock, the GPU synchronized at the end of each
step (ours and PyTorch's CPU steps called in turn, a, b, a, b, so that load
from other processes hits both alike), on every device at hand: gpucnn on the CPU and the GPU, and the same
architecture in PyTorch (CPU; CUDA with TF32 off) when importable, built
layer by layer from the gpucnn model with its weights copied in.
The GPU runs ran on an H100 (bench/results/gpu-h100-2026-11-24).
"""
import numpy as np

from .. import backend
from .env import import_torch
from .timing import time_cpu, time_cpu_interleaved

LR, MOMENTUM = 0.05, 0.9


def _gpucnn_parts():
    """(models, nn, optim) or raise ImportError naming what is missing."""
    from .. import models, nn, optim
    return models, nn, optim


def _images_per_s(batch, timing):
    return batch / timing["median_s"]


def gpucnn_step(model, nn, optim, x, y, opt=None):
    """A zero-argument training step of a gpucnn model on (x, y), with `opt`
    (default: SGD, LR and MOMENTUM)."""
    loss_fn = nn.SoftmaxCrossEntropy()
    opt = opt if opt is not None else optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    xp = backend.get_array_module(x)
    model.train()

    def step():
        opt.zero_grad()
        _, dlogits = loss_fn(model(x), y)
        model.backward_params(dlogits)   # as the trainer: no gradient of the input
        opt.step()
        backend.synchronize(xp)
    return step


def torch_mirror(torch, module):
    """The same architecture as torch.nn modules (same attribute names, so
    the state_dict keys match). NotImplementedError for an unknown layer."""
    tn = torch.nn
    name = type(module).__name__
    if name == "Sequential":
        return tn.Sequential(*[torch_mirror(torch, m) for m in module])
    if name in ("Conv1d", "Conv2d", "Conv3d"):
        return getattr(tn, name)(module.in_channels, module.out_channels, module.kernel_size,
                                 module.stride, module.padding, module.dilation, module.groups,
                                 bias=module.bias is not None)
    if name in ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
        return getattr(tn, name)(module.in_channels, module.out_channels, module.kernel_size,
                                 module.stride, module.padding, module.output_padding, module.groups,
                                 module.bias is not None, module.dilation)
    if name in ("MaxPool1d", "MaxPool2d", "MaxPool3d"):
        return getattr(tn, name)(module.kernel_size, module.stride, module.padding, module.dilation)
    if name in ("AvgPool1d", "AvgPool2d", "AvgPool3d"):
        return getattr(tn, name)(module.kernel_size, module.stride, module.padding)
    if name.startswith("Adaptive"):
        return getattr(tn, name)(module.output_size)
    if name == "Linear":
        return tn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    if name in ("BatchNorm1d", "BatchNorm2d"):
        return getattr(tn, name)(module.num_features, eps=module.eps, momentum=module.momentum)
    if name == "Flatten":
        return tn.Flatten(module.start_dim, module.end_dim)
    if name == "Dropout":
        return tn.Dropout(module.p)
    if name in ("ReLU", "Sigmoid", "Tanh"):
        return getattr(tn, name)()
    if name == "Residual":
        body = torch_mirror(torch, module.body)
        proj = torch_mirror(torch, module.projection) if module._has_projection else None
        return _torch_residual(torch)(body, proj)
    raise NotImplementedError(f"no PyTorch counterpart for gpucnn layer {name}")


def _torch_residual(torch):
    class Residual(torch.nn.Module):
        def __init__(self, body, projection):
            super().__init__()
            self.body = body
            if projection is not None:
                self.projection = projection
            self.has_projection = projection is not None

        def forward(self, x):
            return self.body(x) + (self.projection(x) if self.has_projection else x)
    return Residual


def torch_step(torch, model, x, y, device):
    tmodel = torch_mirror(torch, model)
    state = {k: torch.from_numpy(np.asarray(backend.to_cpu(v))) for k, v in model.state_dict().items()}
    tmodel.load_state_dict(state)  # strict: the mirror has the same keys
    tmodel.to(device).train()
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y.astype(np.int64)).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad()
        loss_fn(tmodel(tx), ty).backward()
        opt.step()
        sync()
    return step


def run_e2e(model_name=None, batch=128, repeats=5, warmup=2, use_torch=True, image_size=28,
            in_channels=1, num_classes=10, log=print):
    """{'model', 'batch', 'input_shape', 'runs': [{name, device, time, images_per_s} or
    {name, skipped}]} for gpucnn and PyTorch on the CPU and (if usable) the GPU."""
    shape = (batch, in_channels, image_size, image_size)
    out = {"model": model_name, "batch": batch, "input_shape": list(shape), "runs": []}
    try:
        models, nn, optim = _gpucnn_parts()
    except ImportError as exc:
        out["skipped"] = f"gpucnn.models / nn / optim not importable ({exc})"
        return out
    model_name = out["model"] = model_name or models.DEFAULT_MODEL
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    torch, why = import_torch() if use_torch else (None, "disabled (--no-torch)")
    gpu = backend.gpu_available()

    def record(name, device, make):
        log(f"e2e: {name} ...")
        try:
            t = time_cpu(make(), repeats, warmup)
            out["runs"].append({"name": name, "device": device, "time": t,
                                "images_per_s": _images_per_s(batch, t)})
        except Exception as exc:  # keep the other runs
            out["runs"].append({"name": name, "device": device, "skipped": f"{type(exc).__name__}: {exc}"})

    def record_side_by_side(named_makers):
        """CPU steps called in turn (a, b, a, b, ...): load from other
        processes hits both alike (timing.time_cpu_interleaved)."""
        log(f"e2e: {', '.join(n for n, _ in named_makers)} side by side ...")
        steps, names = [], []
        for name, make in named_makers:
            try:
                steps.append(make())
                names.append(name)
            except Exception as exc:
                out["runs"].append({"name": name, "device": "cpu", "skipped": f"{type(exc).__name__}: {exc}"})
        for name, t in zip(names, time_cpu_interleaved(steps, repeats, warmup)):
            out["runs"].append({"name": name, "device": "cpu", "time": t, "images_per_s": _images_per_s(batch, t)})

    def ours(device):
        def make():
            model = models.build(model_name, in_channels, num_classes, image_size)
            if device == "gpu":
                model.to_gpu()
                return gpucnn_step(model, nn, optim, backend.to_gpu(x), backend.to_gpu(y))
            return gpucnn_step(nn.fuse(model), nn, optim, x, y)   # as `gpucnn train --fuse auto` on the CPU
        return make

    def theirs(device):
        def make():
            if device == "cuda":
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            return torch_step(torch, models.build(model_name, in_channels, num_classes, image_size),
                              x, y, device)
        return make

    if torch is not None:
        record_side_by_side([("gpucnn-cpu", ours("cpu")), ("torch-cpu", theirs("cpu"))])
    else:
        record("gpucnn-cpu", "cpu", ours("cpu"))
        out["runs"].append({"name": "torch-cpu", "device": "cpu", "skipped": why})
    if gpu:
        record("gpucnn-gpu", "gpu", ours("gpu"))
        if torch is not None and torch.cuda.is_available():
            record("torch-cuda", "gpu", theirs("cuda"))
        else:
            out["runs"].append({"name": "torch-cuda", "device": "gpu",
                                "skipped": why or "PyTorch has no usable CUDA device"})
    else:
        out["runs"].append({"name": "gpucnn-gpu", "device": "gpu",
                            "skipped": f"no usable GPU: {backend.gpu_unavailable_reason()}"})
    return out
