"""End to end: the time of one training step of a model, and images/s.

A step is forward, softmax cross-entropy, backward and an SGD update
(momentum 0.9), on a fixed random batch (the data pipeline is not timed).
On the CPU: our step (fused, as `gpucnn train` runs it) and PyTorch's, eager,
called in turn (a, b, a, b, so that load from other processes hits both
alike), timed one step at a time with the wall clock. On the GPU: every
variant of step_modes (ours: eager / deferred / graph; PyTorch, TF32 off:
eager / CUDA graph / torch.compile), each timed as runs of several steps with
the device waited for at the end of a run only. Each precision (fp32, bf16:
gpucnn.amp against torch.autocast) is timed alike. The same architecture in
PyTorch is built layer by layer from the gpucnn model, its weights copied in.
`ratios` holds our time over PyTorch's per (device, precision, our mode) and
PyTorch mode. An earlier GPU step (gpucnn_step with the model's dropout,
against PyTorch eager) ran on an H100 (bench/results/gpu-h100-2026-11-24);
the step_modes variants on the GPU, fp32 and bf16: not yet run on a GPU.
"""
import numpy as np

from .. import backend
from .env import import_torch
from . import step_modes
from .timing import time_cpu, time_cpu_interleaved

LR, MOMENTUM = 0.05, 0.9


def _gpucnn_parts():
    """(models, nn, optim) or raise ImportError naming what is missing."""
    from .. import models, nn, optim
    return models, nn, optim


def _images_per_s(batch, timing):
    return batch / timing["median_s"]


def gpucnn_step(model, nn, optim, x, y, opt=None, precision="fp32"):
    """A zero-argument training step of a gpucnn model on (x, y), with `opt`
    (default: SGD, LR and MOMENTUM), at `precision` (gpucnn.amp)."""
    from .. import amp
    loss_fn = nn.SoftmaxCrossEntropy()
    if precision != "fp32":
        amp.autocast(model, precision)   # installed on the model for its lifetime here
    opt = opt if opt is not None else optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    xp = backend.get_array_module(x)
    model.train()

    def step():
        opt.zero_grad()
        _, dlogits = loss_fn(model(x).astype(np.float32, copy=False), y)
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


def torch_step(torch, model, x, y, device, precision="fp32"):
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
        with step_modes.autocast(torch, device, precision):
            loss = loss_fn(tmodel(tx), ty)
        loss.backward()
        opt.step()
        sync()
    return step


def _name(base, mode="eager", precision="fp32"):
    """'gpucnn-gpu', 'gpucnn-gpu graph', 'torch-cuda compile bf16', ...: the
    fp32 eager names are those of the runs before modes and precisions."""
    return " ".join([base] + ([mode] if mode != "eager" else []) + ([precision] if precision != "fp32" else []))


def ratios(runs):
    """Our time over PyTorch's, per (device, precision, our mode) and PyTorch mode."""
    timed = [r for r in runs if "time" in r]
    out = []
    for r in timed:
        if r["side"] != "gpucnn":
            continue
        vs = {t["mode"]: r["time"]["median_s"] / t["time"]["median_s"] for t in timed
              if t["side"] == "torch" and t["device"] == r["device"] and t["precision"] == r["precision"]}
        out.append({"device": r["device"], "precision": r["precision"], "mode": r["mode"],
                    "ours_s": r["time"]["median_s"], "vs_torch": vs})
    return out


def run_e2e(model_name=None, batch=128, repeats=5, warmup=2, use_torch=True, image_size=28,
            in_channels=1, num_classes=10, log=print, precisions=("fp32",), modes=step_modes.MODES,
            gpu_steps=20, cpu_steps=True):
    """{'model', 'batch', 'input_shape', 'precisions', 'modes', 'runs': [{name, side,
    device, mode, precision, time, images_per_s} or {..., skipped}], 'ratios'} for
    gpucnn and PyTorch on the CPU (eager, ours and PyTorch's steps interleaved) and
    the GPU (every mode in `modes` that the side has; a GPU timing is a run of
    `gpu_steps` steps over gpu_steps, the device waited for at its end only).
    cpu_steps=False: no CPU steps (recorded as skipped)."""
    shape = (batch, in_channels, image_size, image_size)
    out = {"model": model_name, "batch": batch, "input_shape": list(shape), "precisions": list(precisions),
           "modes": list(modes), "runs": []}
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

    def entry(side, device, mode, precision):
        base = {"gpucnn": "gpucnn-", "torch": "torch-"}[side] + \
            ("cpu" if device == "cpu" else "gpu" if side == "gpucnn" else "cuda")
        return {"name": _name(base, mode, precision), "side": side, "device": device, "mode": mode,
                "precision": precision}

    def timed(e, t):
        out["runs"].append(dict(e, time=t, images_per_s=_images_per_s(batch, t)))

    def skipped(e, reason):
        out["runs"].append(dict(e, skipped=reason))

    def side_by_side(precision):
        """CPU steps called in turn (a, b, a, b, ...): load from other
        processes hits both alike (timing.time_cpu_interleaved)."""
        makers = [(entry("gpucnn", "cpu", "eager", precision), ours_cpu(precision))]
        if torch is not None:
            makers.append((entry("torch", "cpu", "eager", precision), theirs_cpu(precision)))
        log(f"e2e: {model_name} batch {batch}: {', '.join(e['name'] for e, _ in makers)} side by side ...")
        steps, entries = [], []
        for e, make in makers:
            try:
                steps.append(make())
                entries.append(e)
            except Exception as exc:
                skipped(e, f"{type(exc).__name__}: {exc}")
        for e, t in zip(entries, time_cpu_interleaved(steps, repeats, warmup) if steps else []):
            timed(e, t)
        if torch is None:
            skipped(entry("torch", "cpu", "eager", precision), why)

    def ours_cpu(precision):
        def make():   # fused as `gpucnn train --fuse auto` runs it on the CPU
            model = nn.fuse(models.build(model_name, in_channels, num_classes, image_size))
            return gpucnn_step(model, nn, optim, x, y, precision=precision)
        return make

    def theirs_cpu(precision):
        def make():
            return torch_step(torch, models.build(model_name, in_channels, num_classes, image_size),
                              x, y, "cpu", precision=precision)
        return make

    def gpu_variant(side, mode, precision):
        e = entry(side, "gpu", mode, precision)
        if not gpu:
            return skipped(e, f"no usable GPU: {backend.gpu_unavailable_reason()}")
        if side == "torch" and torch is None:
            return skipped(e, why)
        log(f"e2e: {model_name} batch {batch}: {e['name']} ...")
        try:
            model = step_modes.build(model_name, 0, in_channels, num_classes, image_size)
            run = (step_modes.ours(model, x, y, mode, precision, "gpu", gpu_steps) if side == "gpucnn" else
                   step_modes.theirs(torch, model, x, y, mode, precision, "cuda", gpu_steps))
            timed(e, step_modes.per_step(time_cpu(run, repeats, max(1, warmup)), gpu_steps))
        except Exception as exc:  # keep the other runs; the reason is the result
            skipped(e, f"{type(exc).__name__}: {exc}".strip())

    for precision in precisions:
        if cpu_steps:
            side_by_side(precision)
        else:
            for side in ("gpucnn", "torch"):
                skipped(entry(side, "cpu", "eager", precision), "not asked for (--no-cpu-baseline)")
    for precision in precisions:
        for side, side_modes in (("gpucnn", step_modes.OUR_MODES), ("torch", step_modes.TORCH_MODES)):
            for mode in modes:
                if mode in side_modes:
                    gpu_variant(side, mode, precision)
    out["ratios"] = ratios(out["runs"])
    return out
