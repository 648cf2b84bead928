"""Time to a test accuracy: gpucnn's best Fashion-MNIST recipe against a
PyTorch script of the same recipe, run one after the other (issue 11 item 6).

    python3 bench/time_to_accuracy.py --out OUT/tta.json            # the real run: for a GPU
    python3 bench/time_to_accuracy.py --out t.json --model lenet5 --epochs 2 --subset 512 \
        --test-subset 256 --target 0.5 --augment --schedule none     # seconds on a CPU (the test)

The recipe (README): vgg_small, 30 epochs, --augment crop flip, cosine
schedule, label smoothing 0.1, Adam at lr 0.001, batch 128, 10% of the
training images held out as `gpucnn train` does (not used), target 93% test
accuracy. Both sides get:
- the same data: recipes.prepare_data's split and normalization, and batches
  from a gpucnn DataLoader with the same augmentation transforms (gpucnn.data;
  each side its own seeded draws);
- the same model and initial weights (the PyTorch side is the layer-by-layer
  mirror of the gpucnn model, benchmark.e2e.torch_mirror, weights copied in);
- the same optimizer, per-epoch schedule (torch.optim's CosineAnnealingLR /
  StepLR, recipes.make_scheduler's settings) and label-smoothed cross-entropy;
- float32 (TF32 off in PyTorch); the test set evaluated after every epoch,
  inside the clock.
Ours runs as `gpucnn train` sets it up (Trainer defaults for the device, CUDA
graph "auto": off for a model with dropout, vgg_small included, and the
augmentations on the GPU inside the input pipeline there). PyTorch: eager,
augmentations on the host. The clock of a side starts before its first epoch
and stops after the first epoch whose test accuracy reaches the target
(then, unless --all-epochs, that side stops); "not reached" otherwise.
Writes JSON: settings, device, and per side the epochs (train seconds,
elapsed seconds, test accuracy), time_to_target_s and status.
GPU run: not yet run on a GPU.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpucnn import backend, recipes  # noqa: E402
from gpucnn.benchmark.step_modes import torch_mirror_of  # noqa: E402
from gpucnn.data import DataLoader, build_augmentation, load_dataset  # noqa: E402

TORCH_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--model", default="vgg_small")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--augment", nargs="*", default=["crop", "flip"])
    ap.add_argument("--schedule", choices=("none", "step", "cosine"), default="cosine")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--optimizer", choices=TORCH_OPTIMIZERS, default="adam")
    ap.add_argument("--lr", type=float, default=None, help="default: recipes.DEFAULT_LR of the optimizer")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--target", type=float, default=0.93, help="test accuracy to reach (fraction)")
    ap.add_argument("--dataset", default="auto", help="gpucnn.data.load_dataset name (auto: Fashion-MNIST, "
                    "else the digits)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--subset", type=int, default=None, help="first N training images only (tests)")
    ap.add_argument("--test-subset", type=int, default=None, help="first N test images only (tests)")
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--sides", nargs="+", choices=("gpucnn", "torch"), default=["gpucnn", "torch"])
    ap.add_argument("--all-epochs", action="store_true", help="run every epoch even after the target")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def _side_result(epochs, target, started):
    reached = next((e for e in epochs if e["test_accuracy"] >= target), None)
    return {"epochs": epochs, "status": "reached" if reached else "not reached",
            "reached_epoch": reached["epoch"] if reached else None,
            "time_to_target_s": reached["elapsed_s"] if reached else None,
            "best_test_accuracy": max((e["test_accuracy"] for e in epochs), default=None),
            "total_s": time.perf_counter() - started}


def run_gpucnn(args, ds, data, device, on_epoch=lambda epochs: None):
    trainer = recipes.make_trainer(args.model, ds.input_shape, ds.num_classes, optimizer=args.optimizer,
                                   lr=args.lr, label_smoothing=args.label_smoothing, schedule=args.schedule,
                                   epochs=args.epochs, device=device, seed=args.seed)
    trainer.cuda_graph = "auto" if device == "gpu" else False   # `gpucnn train --cuda-graph auto`
    aug = build_augmentation(args.augment, ds.num_classes, ds.input_shape[-1])
    train = DataLoader(data.x_train, data.y_train, args.batch_size, transform=aug, seed=None)
    test = DataLoader(data.x_test, data.y_test, 512, shuffle=False)
    epochs, started = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        rec = trainer.train_epoch(train)
        acc = trainer.evaluate(test)["accuracy"]
        epochs.append({"epoch": epoch, "train_seconds": rec["seconds"], "train_loss": rec["loss"],
                       "test_accuracy": acc, "elapsed_s": time.perf_counter() - started})
        print(f"gpucnn epoch {epoch}: test accuracy {acc:.4f}, {epochs[-1]['elapsed_s']:.1f} s", flush=True)
        on_epoch(epochs)
        if acc >= args.target and not args.all_epochs:
            break
    out = _side_result(epochs, args.target, started)
    out["cuda_graph"] = trainer.step_graph is not None
    return out


def _torch_optimizer(torch, name, params, lr):
    lr = recipes.DEFAULT_LR[name] if lr is None else lr
    if name in ("sgd", "momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=0.0 if name == "sgd" else 0.9, nesterov=name == "nesterov")
    return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(params, lr=lr)


def _torch_scheduler(torch, name, opt, epochs):
    """recipes.make_scheduler's schedules in torch.optim (stepped once per epoch)."""
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    return None


def run_torch(args, ds, data, device, on_epoch=lambda epochs: None):
    import torch
    from gpucnn import models
    from gpucnn import random as grandom
    tdev = "cuda" if device == "gpu" else "cpu"
    if tdev == "cuda":
        if not torch.cuda.is_available():
            return {"status": "skipped", "skipped": "PyTorch has no usable CUDA device"}
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    grandom.manual_seed(args.seed)   # the weights recipes.make_trainer starts from
    model = torch_mirror_of(torch, models.build(args.model, ds.input_shape[0], ds.num_classes,
                                                ds.input_shape[1]), tdev)
    torch.manual_seed(args.seed)
    opt = _torch_optimizer(torch, args.optimizer, model.parameters(), args.lr)
    sched = _torch_scheduler(torch, args.schedule, opt, args.epochs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    aug = build_augmentation(args.augment, ds.num_classes, ds.input_shape[-1])
    train = DataLoader(data.x_train, data.y_train, args.batch_size, transform=aug, seed=args.seed + 1)
    tx_test = torch.from_numpy(data.x_test)
    ty_test = torch.from_numpy(np.asarray(data.y_test, np.int64)).to(tdev)
    epochs, started = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum, seen = torch.zeros((), device=tdev), 0
        for xb, yb in train:
            xb = torch.from_numpy(np.ascontiguousarray(xb)).to(tdev, non_blocking=True)
            yb = torch.from_numpy(np.asarray(yb, np.float32 if np.ndim(yb) == 2 else np.int64)).to(tdev)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(xb)
            seen += len(xb)
        if sched is not None:
            sched.step()
        train_loss = float(loss_sum) / max(seen, 1)   # the epoch's one wait for the device
        train_seconds = time.perf_counter() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(tx_test), 512):
                logits = model(tx_test[i:i + 512].to(tdev))
                correct += int((logits.argmax(1) == ty_test[i:i + 512]).sum())
        acc = correct / len(tx_test)
        epochs.append({"epoch": epoch, "train_seconds": train_seconds, "train_loss": train_loss,
                       "test_accuracy": acc, "elapsed_s": time.perf_counter() - started})
        print(f"torch  epoch {epoch}: test accuracy {acc:.4f}, {epochs[-1]['elapsed_s']:.1f} s", flush=True)
        on_epoch(epochs)
        if acc >= args.target and not args.all_epochs:
            break
    return _side_result(epochs, args.target, started)


def main(argv=None):
    args = parse_args(argv)
    device = backend.resolve_device(args.device)
    ds = load_dataset(args.dataset, args.data_dir)
    data = recipes.prepare_data(ds, val_split=0.1, subset=args.subset, seed=args.seed)
    if args.test_subset:
        data.x_test, data.y_test = data.x_test[:args.test_subset], data.y_test[:args.test_subset]
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "dataset": ds.name,
              "train_images": int(len(data.x_train)), "test_images": int(len(data.x_test)),
              "device": device, "device_info": backend.device_info(), "sides": {}}

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    def partial(side):   # the epochs so far, on disk: a run cut off by a time limit keeps them
        def on_epoch(epochs):
            result["sides"][side] = {"status": "running (cut off here if this stays)", "epochs": epochs}
            save()
        return on_epoch
    for side in args.sides:
        try:
            result["sides"][side] = (run_gpucnn if side == "gpucnn" else run_torch)(args, ds, data, device,
                                                                                   partial(side))
        except Exception as exc:   # keep the other side's result
            result["sides"][side] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        save()
    for side, r in result["sides"].items():
        t = r.get("time_to_target_s")
        print(f"{side:>6}: {r['status']}" + (f" at epoch {r['reached_epoch']} in {t:.1f} s" if t is not None else "")
              + (f" ({r['error']})" if "error" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
