"""Train the same model with the seven optimizers of the course (SGD, momentum,
Nesterov, Adagrad, RMSprop, Adadelta, Adam) and plot their training losses
on one figure.

    python examples/compare_optimizers.py --epochs 3 --out optimizers.png
    python examples/compare_optimizers.py --dataset digits --subset 300 --epochs 1   # seconds
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import gpucnn  # noqa: E402
from gpucnn import models, recipes  # noqa: E402
from gpucnn.data import DATASETS, DataLoader, load_dataset  # noqa: E402

SEVEN = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="auto", choices=DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model", default="lenet5", choices=models.MODELS)
    p.add_argument("--device", default="auto", choices=gpucnn.backend.DEVICES)
    p.add_argument("--out", default="optimizers.png")
    args = p.parse_args(argv)

    ds = load_dataset(args.dataset, args.data_dir)
    data = recipes.prepare_data(ds, val_split=0.0, subset=args.subset)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    final = {}
    for name in SEVEN:
        # seed 0 for all: the same initial weights and batch order
        trainer = recipes.make_trainer(args.model, ds.input_shape, ds.num_classes, optimizer=name,
                                        device=args.device, seed=0)
        loader = DataLoader(data.x_train, data.y_train, 64, seed=0)
        losses = []  # running mean loss, sampled along the epochs
        for _ in range(args.epochs):
            trainer.train_epoch(loader, progress=lambda i, n, loss, acc, ips: losses.append(loss))
        ax.plot([i / len(loader) for i in range(1, len(losses) + 1)], losses,
                label=f"{name} (lr {recipes.DEFAULT_LR[name]:g})")
        final[name] = losses[-1]
        print(f"{name:9s} final running loss {losses[-1]:.4f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (running mean within each epoch)")
    ax.set_title(f"{args.model} on {ds.name} ({len(data.x_train)} images)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"plot written to {args.out}")
    return final


if __name__ == "__main__":
    main()
