"""Train a CNN on Fashion-MNIST with the library API (GPU when usable, else CPU).

    python examples/train_fashion_mnist.py                    # full run, default model
    python examples/train_fashion_mnist.py --subset 2000 --epochs 1 --model lenet5
    python examples/train_fashion_mnist.py --dataset digits --epochs 1    # seconds

Falls back to scikit-learn's 8x8 digits when Fashion-MNIST is not installed
(the loader says so). The `gpucnn train` command does the same with more options.
"""
import argparse

import gpucnn
from gpucnn import models, nn, optim, recipes
from gpucnn.data import DATASETS, DataLoader, load_dataset
from gpucnn.trainer import Trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="auto", choices=DATASETS,
                   help="auto = Fashion-MNIST if installed, else scikit-learn's 8x8 digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--subset", type=int, default=None, help="train on the first N images")
    p.add_argument("--model", default=models.DEFAULT_MODEL, choices=models.MODELS)
    p.add_argument("--device", default="auto", choices=gpucnn.backend.DEVICES)
    args = p.parse_args(argv)

    device = gpucnn.backend.resolve_device(args.device)
    ds = load_dataset(args.dataset, args.data_dir)
    print(f"{ds.name} from {ds.source}; device {device}")
    for note in ds.notes:
        print("note:", note)
    data = recipes.prepare_data(ds, val_split=0.1, subset=args.subset, seed=0)  # train-split statistics

    gpucnn.random.manual_seed(0)
    model = models.build(args.model, ds.input_shape[0], ds.num_classes, ds.input_shape[1])
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=1e-3), loss_fn=nn.SoftmaxCrossEntropy(),
                      device=device)
    trainer.fit(DataLoader(data.x_train, data.y_train, 128, seed=0),
                DataLoader(data.x_val, data.y_val, 512, shuffle=False), epochs=args.epochs,
                on_epoch_end=lambda r: print(f"epoch {r['epoch']}: train acc {r['train_accuracy']:.4f}, "
                                             f"val acc {r['val_accuracy']:.4f}, {r['images_per_second']:.0f} img/s"))
    test = trainer.evaluate(DataLoader(data.x_test, data.y_test, 512, shuffle=False))
    print(f"test accuracy {test['accuracy']:.4f}")
    return test


if __name__ == "__main__":
    main()
