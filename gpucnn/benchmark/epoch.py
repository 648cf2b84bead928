"""Images/s of a whole training epoch over real data (`gpucnn bench --e2e --e2e-epoch`).

Unlike the step timings (one fixed batch on the device), this times what a
user's epoch costs: the training images of Fashion-MNIST (the scikit-learn
digits where it is not installed; normalized as `gpucnn train` does), shuffled
into batches by a data loader, copied to the device, forward, loss, backward,
SGD momentum (lr 0.05, 0.9) and the epoch's loss and accuracy. Ours: a
gpucnn DataLoader and the Trainer as `gpucnn train` sets it up on that device
(CUDA graph "auto", deferred reads and the input pipeline on the GPU). PyTorch:
torch.utils.data.DataLoader over the same arrays, the mirror of the same model
with the same weights, eager, the loss sum and correct count kept on the
device and read at the end (no wait per step). Each side first runs a short
warm-up pass (both batch shapes: full and the last, smaller one), then one
timed epoch. GPU side: not yet run on a GPU.
"""
import time

import numpy as np

from .. import backend, optim, recipes
from ..data import DataLoader, load_dataset
from ..trainer import Trainer
from . import step_modes


def _warmup_part(n, batch):
    """How many images a warm-up pass takes: two full batches and the last one's size."""
    return min(n, 2 * batch + n % batch)


def run_epochs(model_name, batch, torch=None, images=None, data_dir=None, log=print):
    """{'model', 'batch', 'dataset', 'images', 'runs': [{name, side, device, seconds,
    images_per_s} or {..., skipped}]}: ours and PyTorch's epoch on the GPU when
    usable, else on the CPU. images: use the first `images` training images (None: all)."""
    ds = load_dataset("auto", data_dir)
    data = recipes.prepare_data(ds, val_split=0, subset=images)
    x, y = data.x_train, data.y_train
    gpu = backend.gpu_available()
    device = "gpu" if gpu else "cpu"
    c, size = ds.input_shape[0], ds.input_shape[-1]
    out = {"model": model_name, "batch": batch, "dataset": ds.name, "images": int(len(x)), "device": device,
           "runs": []}
    warm = _warmup_part(len(x), batch)

    def record(side, fn):
        name = f"{side}-{'cpu' if device == 'cpu' else 'gpu' if side == 'gpucnn' else 'cuda'} epoch"
        log(f"e2e epoch: {model_name} batch {batch}: {name} ({len(x)} {ds.name} images) ...")
        try:
            seconds, accuracy = fn()
            out["runs"].append({"name": name, "side": side, "device": device, "seconds": seconds,
                                "images_per_s": len(x) / seconds, "train_accuracy": accuracy})
        except Exception as exc:
            out["runs"].append({"name": name, "side": side, "device": device,
                                "skipped": f"{type(exc).__name__}: {exc}"})

    def ours():
        model = step_modes.build(model_name, 0, c, ds.num_classes, size)
        opt = optim.SGD(model.parameters(), lr=step_modes.LR, momentum=step_modes.MOMENTUM)
        trainer = Trainer(model, opt, device=device, cuda_graph="auto" if gpu else False)
        trainer.train_epoch(DataLoader(x[:warm], y[:warm], batch, seed=1))
        loader = DataLoader(x, y, batch, seed=0)
        t0 = time.perf_counter()
        rec = trainer.train_epoch(loader)
        return time.perf_counter() - t0, rec["accuracy"]

    def theirs():
        tdev = "cuda" if gpu else "cpu"
        if gpu and not torch.cuda.is_available():
            raise step_modes.NotRunHere("PyTorch has no usable CUDA device")
        if gpu:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        tmodel = step_modes.torch_mirror_of(torch, step_modes.build(model_name, 0, c, ds.num_classes, size), tdev)
        opt = torch.optim.SGD(tmodel.parameters(), lr=step_modes.LR, momentum=step_modes.MOMENTUM)
        loss_fn = torch.nn.CrossEntropyLoss()

        def epoch(xs, ys, seed):
            gen = torch.Generator().manual_seed(seed)
            tds = torch.utils.data.TensorDataset(torch.from_numpy(xs), torch.from_numpy(np.asarray(ys, np.int64)))
            loader = torch.utils.data.DataLoader(tds, batch_size=batch, shuffle=True, generator=gen,
                                                 pin_memory=gpu)
            loss_sum = torch.zeros((), device=tdev)
            correct = torch.zeros((), dtype=torch.int64, device=tdev)
            for xb, yb in loader:
                xb, yb = xb.to(tdev, non_blocking=True), yb.to(tdev, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                logits = tmodel(xb)
                loss = loss_fn(logits, yb)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(xb)
                correct += (logits.argmax(1) == yb).sum()
            return float(loss_sum), int(correct)    # the epoch's one wait for the device
        epoch(x[:warm], y[:warm], 1)
        t0 = time.perf_counter()
        _, correct = epoch(x, y, 0)
        return time.perf_counter() - t0, correct / len(x)

    record("gpucnn", ours)
    if torch is None:
        out["runs"].append({"name": "torch epoch", "side": "torch", "device": device,
                            "skipped": "PyTorch not importable or disabled (--no-torch)"})
    else:
        record("torch", theirs)
    return out
