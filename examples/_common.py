"""What the small synthetic-data examples share: common arguments, and a
seeded Adam run through gpucnn.trainer.Trainer that prints one line per epoch
and the final test accuracy against chance."""
import gpucnn
from gpucnn import optim
from gpucnn.trainer import array_loader, Trainer


def add_training_arguments(p, samples, epochs, batch_size, lr, noise, what):
    p.add_argument("--samples", type=int, default=samples, help=f"training {what} (test: a quarter as many)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--noise", type=float, default=noise, help="std of the added Gaussian noise")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=gpucnn.backend.DEVICES)


def train_and_report(build_model, data, classes, args, description, test_batch_size):
    """Seed, build, train with Adam on (x_train, y_train, x_test, y_test) = data; print progress."""
    x_train, y_train, x_test, y_test = data
    gpucnn.random.manual_seed(args.seed)
    model = build_model()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=args.lr), device=args.device)
    print(f"{args.samples} {description}, classes {classes}, device {trainer.device}")
    test_loader = array_loader(x_test, y_test, batch_size=test_batch_size, shuffle=False)
    trainer.fit(array_loader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed),
                test_loader, epochs=args.epochs,
                on_epoch_end=lambda r: print(f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}, "
                                             f"train accuracy {r['train_accuracy']:.3f}, "
                                             f"test accuracy {r['val_accuracy']:.3f}"))
    final = trainer.evaluate(test_loader)
    print(f"test accuracy {final['accuracy']:.3f} (chance {1 / len(classes):.3f})")
    return final
