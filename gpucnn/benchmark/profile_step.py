"""Where a CPU training step spends its time: per phase and per layer, ours and PyTorch's.

A step is the one `e2e` times (forward, softmax cross-entropy, backward, SGD
with momentum), on a fixed random batch. Each phase is timed with
perf_counter around it (the CPU runs synchronously):

    data       drawing one batch from a DataLoader (shuffled gather, random
               crop and flip; ours only: PyTorch's loader is not comparable)
    forward    the model's forward, and per top-level layer
    loss       the loss and its gradient
    backward   the model's backward (no gradient of the input, as in e2e's
               step and PyTorch's), and per top-level layer
    update     optimizer step + zero_grad
    overhead   forward + backward minus the sum of the layers' own times
               (the containers' Python work between layers, and the timers)

The step's total runs from forward through update (data excluded, as in
the e2e benchmark).

Per-layer times come from wrapping each top-level layer's forward and
backward (ours) or forward/backward hooks (PyTorch, on a twin model: the
hooks cost time, so PyTorch's step and phases come from an unhooked copy);
each number is the median over the repeats. The steps alternate (ours,
PyTorch, PyTorch hooked, ...), so that a noisy neighbour hits all alike.
"""
import time

import numpy as np

from .e2e import LR, MOMENTUM, torch_mirror

PHASES = ("data", "forward", "loss", "backward", "update", "overhead")


class _Clock:
    """Named accumulators of perf_counter seconds for one step."""

    def __init__(self):
        self.t = {}

    def add(self, key, dt):
        self.t[key] = self.t.get(key, 0.0) + dt


def _layer_names(model):
    return [f"{i}:{type(m).__name__}" for i, m in enumerate(model)]


def _wrap_ours(model, clock):
    """Time each top-level layer's forward/backward into clock (instance attributes)."""
    for name, layer in zip(_layer_names(model), model):
        def timed(fn, key):
            def call(x):
                t0 = time.perf_counter()
                y = fn(x)
                clock.add(key, time.perf_counter() - t0)
                return y
            return call
        object.__setattr__(layer, "forward", timed(layer.forward, ("forward", name)))
        if layer is model[0]:   # the step's backward_params: its parameters' gradients only, as e2e's
            object.__setattr__(layer, "_backward_params", timed(layer._backward_params, ("backward", name)))
        else:
            object.__setattr__(layer, "backward", timed(layer.backward, ("backward", name)))


def _ours(model_name, x, y, loader):
    from .. import models, nn, optim
    model = nn.fuse(models.build(model_name, x.shape[1], 10, x.shape[2]))   # as `gpucnn train` on the CPU
    model.train()
    clock = _Clock()
    _wrap_ours(model, clock)
    loss_fn = nn.SoftmaxCrossEntropy()
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    batches = iter(())

    def step():
        nonlocal batches
        clock.t = {}
        t0 = time.perf_counter()
        try:
            next(batches)
        except StopIteration:
            batches = iter(loader)
            next(batches)
        t1 = time.perf_counter()
        out = model(x)
        t2 = time.perf_counter()
        _, dlogits = loss_fn(out, y)
        t3 = time.perf_counter()
        model.backward_params(dlogits)   # as e2e's step and the trainer: no gradient of the input
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t5 = time.perf_counter()
        return _phases(clock, t0, t1, t2, t3, t4, t5)
    return model, step


def _phases(clock, t0, t1, t2, t3, t4, t5):
    """The step's phases; total = forward through update (data excluded, as
    in e2e); overhead = forward + backward minus the sum of the layers' own
    times (the containers' Python work between layers)."""
    phases = {"data": t1 - t0, "forward": t2 - t1, "loss": t3 - t2, "backward": t4 - t3, "update": t5 - t4}
    phases["overhead"] = max(0.0, phases["forward"] + phases["backward"] - sum(clock.t.values())) \
        if clock.t else 0.0
    return {"total": t5 - t1, "phases": phases, "layers": dict(clock.t)}


def _torch_parts(torch, model):
    tmodel = torch_mirror(torch, model)
    tmodel.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()})
    tmodel.train()
    return tmodel, torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM)


def _theirs(torch, model, x, y, hooked):
    """PyTorch's step. hooked: per-layer times from forward/backward hooks
    (which cost time themselves: the phases come from an unhooked twin)."""
    tmodel, opt = _torch_parts(torch, model)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    if hooked:
        tx.requires_grad_(True)   # so that the first layer's backward hooks fire too
    loss_fn = torch.nn.CrossEntropyLoss()
    clock = _Clock()
    starts = {}
    for name, layer in zip(_layer_names(model), tmodel) if hooked else ():
        def pre(key):
            return lambda *a: starts.__setitem__(key, time.perf_counter())

        def post(key):
            return lambda *a: clock.add(key, time.perf_counter() - starts.pop(key, time.perf_counter()))
        layer.register_forward_pre_hook(pre(("forward", name)))
        layer.register_forward_hook(post(("forward", name)))
        layer.register_full_backward_pre_hook(pre(("backward", name)))
        layer.register_full_backward_hook(post(("backward", name)))

    def step():
        clock.t = {}
        t0 = t1 = time.perf_counter()
        out = tmodel(tx)
        t2 = time.perf_counter()
        loss = loss_fn(out, ty)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t5 = time.perf_counter()
        return _phases(clock, t0, t1, t2, t3, t4, t5)
    return step


def _median_record(records, names):
    med = lambda vals: float(np.median(vals))   # noqa: E731
    phases = {p: med([r["phases"][p] for r in records]) for p in PHASES}
    layers = [{"layer": n, "forward_s": med([r["layers"].get(("forward", n), 0.0) for r in records]),
               "backward_s": med([r["layers"].get(("backward", n), 0.0) for r in records])} for n in names]
    return {"total_s": med([r["total"] for r in records]), "phases_s": phases, "layers": layers}


def _loader(x, y):
    from ..data.loader import DataLoader
    from ..data.transforms import Compose, RandomCrop, RandomHorizontalFlip
    n = len(x)
    pool_x = np.concatenate([x] * 4)   # a small dataset: 4 batches per epoch
    pool_y = np.concatenate([y] * 4)
    return DataLoader(pool_x, pool_y, batch_size=n, shuffle=True, seed=0, prefetch=0,
                      transform=Compose([RandomCrop(max(1, x.shape[2] // 8)), RandomHorizontalFlip()]))


def profile_step(model_name, batch=128, image_size=28, in_channels=1, repeats=10, warmup=2, torch=None):
    """{'model', 'batch', 'ours': {total_s, phases_s, layers}, 'torch': ... or None}."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, in_channels, image_size, image_size)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    model, ours = _ours(model_name, x, y, _loader(x, y))
    steps = [ours]
    if torch is not None:
        steps += [_theirs(torch, model, x, y, hooked=False), _theirs(torch, model, x, y, hooked=True)]
    records = [[] for _ in steps]
    for i in range(warmup + repeats):
        for fn, rec in zip(steps, records):
            r = fn()
            if i >= warmup:
                rec.append(r)
    names = _layer_names(model)
    theirs = None
    if torch is not None:
        theirs = _median_record(records[1], names)
        theirs["layers"] = _median_record(records[2], names)["layers"]
    return {"model": model_name, "batch": batch, "input_shape": list(x.shape),
            "ours": _median_record(records[0], names), "torch": theirs}


def profile_text(prof):
    """A table of one profile (phases, then layers), ours vs PyTorch in ms."""
    ours, theirs = prof["ours"], prof["torch"]

    def row(label, a, b):
        ratio = f"{a / b:6.2f}x" if b else "      -"
        return f"  {label:<22}{a * 1e3:9.2f}{(b or 0) * 1e3:9.2f} {ratio}"
    lines = [f"profile {prof['model']} batch {prof['batch']}: ms (ours, PyTorch, ratio)"]
    tb = theirs or {"total_s": 0, "phases_s": {}, "layers": [{}] * len(ours["layers"])}
    lines.append(row("step", ours["total_s"], tb["total_s"]))
    for p in PHASES:
        lines.append(row(p, ours["phases_s"][p], tb["phases_s"].get(p, 0.0)))
    for a, b in zip(ours["layers"], tb["layers"]):
        lines.append(row(a["layer"] + " fwd", a["forward_s"], b.get("forward_s", 0.0)))
        lines.append(row(a["layer"] + " bwd", a["backward_s"], b.get("backward_s", 0.0)))
    return "\n".join(lines)
