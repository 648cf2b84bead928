"""Training-step variants by mode and precision, for `gpucnn bench --e2e` and
bench/gpu_step_check.py (one place for both).

Ours, through the Trainer (what `gpucnn train` runs):
    eager      sync="step": the loss, correct count and label check read on
               the host after every step (the path before issue 11)
    deferred   sync="deferred": those sums stay on the device, read once per run
    graph      deferred, and the whole step captured once and replayed
               (gpucnn.cuda_graph; on the CPU the Trainer's stand-in replays it)
PyTorch, the same architecture (e2e.torch_mirror) with the same weights:
    eager      forward, loss, backward, SGD step
    graph      the whole step (forward to optimizer update) captured in one
               torch.cuda.CUDAGraph after warm-up on a side stream; CUDA only
    compile    the model through torch.compile (default mode); where it fails
               (no compiler, an unsupported layer) the variant records why
Precisions: fp32 (TF32 off on both sides) and bf16 (ours: gpucnn.amp autocast;
PyTorch: torch.autocast(dtype=torch.bfloat16) around forward and loss).
SGD with momentum 0.9, lr 0.05, on both sides; models built without dropout
(a graph cannot capture dropout's fresh draws; both sides alike).

A variant is a zero-argument callable running `steps` steps of one fixed
batch resident on the device and waiting for the device at the end; the
per-step time is a run's time over `steps` (per_step), so the host is never
made to wait inside a run: what the deferred and graph modes are for.
GPU variants: not yet run on a GPU.
"""
import numpy as np

from .. import backend, models, nn, optim
from .. import random as grandom

OUR_MODES = ("eager", "deferred", "graph")
TORCH_MODES = ("eager", "graph", "compile")
MODES = ("eager", "deferred", "graph", "compile")
PRECISIONS = ("fp32", "bf16")
LR, MOMENTUM = 0.05, 0.9


class NotRunHere(Exception):
    """A variant that cannot run on this machine (the message says why)."""


def build(name, seed=0, in_channels=1, num_classes=10, image_size=28):
    """A zoo model without dropout, weights seeded by `seed` (the same on both sides)."""
    grandom.manual_seed(seed)
    return models.build(name, in_channels, num_classes, image_size, dropout=0.0)


def batch(shape, num_classes=10, seed=0):
    """A fixed random (x float32, y int64) batch on the host."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32), rng.integers(0, num_classes, shape[0])


def ours(model, x, y, mode, precision="fp32", device="gpu", steps=1, fuse=False):
    """`steps` training steps of a gpucnn model by our Trainer in `mode`."""
    from ..trainer import Trainer
    if mode not in OUR_MODES:
        raise ValueError(f"ours: mode must be one of {OUR_MODES}, got {mode!r}")
    if fuse:
        model = nn.fuse(model)
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    # input_pipeline off: the batch is already on the device; the step alone is timed
    trainer = Trainer(model, opt, device=device, precision=precision, input_pipeline=False,
                      sync="step" if mode == "eager" else "deferred", cuda_graph=mode == "graph")
    to = backend.to_gpu if trainer.device == "gpu" else (lambda a: a)
    data = [(to(x), to(y))] * steps

    def run():
        trainer.train_epoch(data)   # reads the epoch's sums once: the device has finished
    return run


def autocast(torch, device, precision, cache=True):
    """PyTorch's autocast to bfloat16 on `device` ('cpu' or 'cuda'), or nothing for fp32.
    cache=False inside a CUDA graph capture (PyTorch's documented requirement:
    its cast-weight cache must not outlive the captured step)."""
    if precision == "fp32":
        import contextlib
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16, cache_enabled=cache)


def torch_mirror_of(torch, model, device):
    """The PyTorch mirror of `model`, its weights copied in, on `device`."""
    from .e2e import torch_mirror
    tmodel = torch_mirror(torch, model)
    tmodel.load_state_dict({k: torch.from_numpy(np.asarray(backend.to_cpu(v)))
                            for k, v in model.state_dict().items()})
    return tmodel.to(device).train()


def theirs(torch, model, x, y, mode, precision="fp32", device="cuda", steps=1):
    """`steps` training steps of the PyTorch mirror of `model` in `mode`;
    NotRunHere where the mode cannot run on `device`."""
    if mode not in TORCH_MODES:
        raise ValueError(f"theirs: mode must be one of {TORCH_MODES}, got {mode!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise NotRunHere("PyTorch has no usable CUDA device")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    elif mode == "graph":
        raise NotRunHere("a CUDA graph needs a CUDA device")
    tmodel = torch_mirror_of(torch, model, device)
    net = torch.compile(tmodel) if mode == "compile" else tmodel
    opt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(np.asarray(y, np.int64)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=mode != "graph")   # a graph keeps its .grad buffers
        with autocast(torch, device, precision, cache=mode != "graph"):
            loss = loss_fn(net(tx), ty)
        loss.backward()
        opt.step()
    one = step
    if mode == "graph":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):   # warm-up: the optimizer state and cuDNN plans exist before capture
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        one = graph.replay
    elif mode == "compile":
        step()   # compiles here (and fails here, where it does), not inside the timing
        sync()

    def run():
        for _ in range(steps):
            one()
        sync()
    return run


def per_step(timing, steps):
    """A timing record of runs of `steps` steps, as the time of one step."""
    out = dict(timing)
    for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s"):
        out[key] = timing[key] / steps
    return out
