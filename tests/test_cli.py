"""`gpucnn train`, `summary` and `search` on tiny subsets of the 8x8 digits
(scikit-learn's bundled set: no files needed, a second per run)."""
import json

import numpy as np
import pytest

from gpucnn import cli, hparam_search, models, recipes
from gpucnn.trainer import Trainer

pytest.importorskip("sklearn")

TINY = ["--dataset", "digits", "--subset", "300", "--model", "lenet5", "--device", "cpu", "--seed", "1"]
EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "images_per_second"}


def train(tmp_path, *extra):
    metrics = tmp_path / "metrics.json"
    rc = cli.main(["train", *TINY, "--metrics-out", str(metrics), *extra])
    return rc, json.loads(metrics.read_text()) if metrics.exists() else None


def test_train_writes_metrics_and_plot(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    rc, m = train(tmp_path, "--epochs", "3", "--optimizer", "adam", "--lr", "0.01", "--plot", str(plot))
    assert rc == 0
    assert {"dataset", "model", "device", "epochs", "test_loss", "test_accuracy"} <= m.keys()
    assert (m["dataset"], m["model"], m["device"]) == ("digits", "lenet5", "cpu")
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]
    assert all(set(e) == EPOCH_KEYS for e in m["epochs"])
    assert m["epochs"][-1]["train_loss"] < m["epochs"][0]["train_loss"]
    assert m["test_accuracy"] > 0.3  # 10 classes: well above chance after 3 epochs
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "dataset: digits" in out and out.count("val loss") == 3 and "test accuracy" in out


def test_train_options_augment_schedule_smoothing(tmp_path):
    rc, m = train(tmp_path, "--epochs", "2", "--optimizer", "nesterov", "--augment", "crop", "cutmix",
                  "--label-smoothing", "0.1", "--schedule", "cosine", "--warmup", "1", "--weight-decay",
                  "1e-4", "--val-split", "0", "--no-progress")
    assert rc == 0 and len(m["epochs"]) == 2
    assert m["epochs"][0]["val_loss"] is None and np.isfinite(m["test_loss"])


def test_interrupt_saves_checkpoint_and_resume_continues(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "model.ckpt.npz"
    real = Trainer.train_epoch
    calls = {"n": 0}

    def interrupted_on_second(self, loader, progress=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, loader, progress)
    monkeypatch.setattr(Trainer, "train_epoch", interrupted_on_second)
    rc, m = train(tmp_path, "--epochs", "3", "--checkpoint", str(ckpt))
    assert rc == 130 and m is None and ckpt.exists()
    assert "saved a checkpoint after epoch 1" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "train_epoch", real)
    rc, m = train(tmp_path, "--epochs", "3", "--resume", str(ckpt))
    assert rc == 0
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]  # epoch 1 from the checkpoint
    assert "resumed from" in capsys.readouterr().out


def test_early_stopping_stops_and_restores_best(tmp_path, monkeypatch, capsys):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])  # best at epoch 2, then 2 epochs without better

    def scripted_evaluate(self, loader):
        return {"loss": 1.0, "accuracy": next(scores)}  # the last call scores the test set
    monkeypatch.setattr(Trainer, "evaluate", scripted_evaluate)
    rc, m = train(tmp_path, "--epochs", "6", "--early-stopping", "2")
    assert rc == 0 and [e["val_accuracy"] for e in m["epochs"]] == [0.5, 0.7, 0.6, 0.65]
    assert "restored the weights of epoch 2" in capsys.readouterr().out


@pytest.mark.parametrize("name", models.MODELS)
def test_summary(name, capsys):
    assert cli.main(["summary", "--model", name, "--dataset-shape", "3", "32", "32"]) == 0
    out = capsys.readouterr().out
    n_params = sum(p.data.size for p in models.build(name, 3, 10, 32).parameters())
    assert f"{n_params:,}" in out or str(n_params) in out


def test_search_grid_kfold_and_ensemble(tmp_path, capsys):
    out = tmp_path / "search.json"
    rc = cli.main(["search", *TINY, "--mode", "grid", "--epochs", "1", "--lr", "0.003", "0.03",
                   "--weight-decay", "0", "--batch-size", "64", "--optimizer", "adam",
                   "--k-folds", "2", "--ensemble", "1", "--json-out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    accs = [r["val_accuracy"] for r in res["results"]]
    assert len(accs) == 2 and accs == sorted(accs, reverse=True)
    assert all(r["folds"] == 2 for r in res["results"])
    assert res["ensemble"]["members"] == 2 and 0 <= res["ensemble"]["test_accuracy"] <= 1
    assert "val_acc" in capsys.readouterr().out


def test_search_space_and_kfold():
    grid = hparam_search.search_space("grid", {"lr": [1, 2], "optimizer": ["adam", "sgd", "momentum"]})
    assert len(grid) == 6 and {(c["lr"], c["optimizer"]) for c in grid} == {
        (lr, o) for lr in (1, 2) for o in ("adam", "sgd", "momentum")}
    rand = hparam_search.search_space("random", {"lr": [1e-4, 1e-1], "batch_size": [32, 64]}, n_trials=20, seed=0)
    assert len(rand) == 20 and all(1e-4 <= c["lr"] <= 1e-1 and c["batch_size"] in (32, 64) for c in rand)
    folds = hparam_search.kfold_indices(10, 3)
    vals = np.concatenate([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(10))
    assert all(len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 10 for tr, va in folds)


def test_ensemble_is_mean_of_softmax():
    class Fixed:
        def __init__(self, p):
            self.p = np.asarray(p)

        def predict_proba(self, x, batch_size=512):
            return self.p
    got = hparam_search.ensemble_proba([Fixed([[0.9, 0.1]]), Fixed([[0.3, 0.7]])], np.zeros((1, 1)))
    np.testing.assert_allclose(got, [[0.6, 0.4]])


def test_bad_arguments():
    with pytest.raises(SystemExit):
        cli.main(["train", "--optimizer", "lbfgs"])
    with pytest.raises(ValueError, match="unknown optimizer"):
        recipes.make_optimizer("lbfgs", [])


def test_outputs_in_new_folders_are_created_before_training(tmp_path):
    """`make train` writes into out/, which a fresh clone does not have."""
    out = tmp_path / "out" / "run1"
    rc = cli.main(["train", *TINY, "--epochs", "1", "--metrics-out", str(out / "metrics.json"),
                   "--plot", str(out / "curves.png"), "--checkpoint", str(out / "model.ckpt.npz")])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "curves.png", "model.ckpt.npz"}


def test_unwritable_output_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["train", *TINY, "--epochs", "1", "--metrics-out", str(blocker / "x" / "m.json")]) == 2
    out, err = capsys.readouterr()
    assert "epoch" not in out
    assert err.startswith(f"gpucnn train: error: cannot create the folder of {blocker}/x/m.json")


def test_fuse_auto_fuses_on_the_cpu_with_the_same_results(tmp_path, monkeypatch):
    """--fuse auto (the default) fuses the conv-BN-ReLU blocks on the CPU; the
    run's losses and test result equal --fuse off's bit for bit."""
    from gpucnn import nn
    fused = []
    real_fuse = nn.fuse
    monkeypatch.setattr(nn, "fuse", lambda model: fused.append(model) or real_fuse(model))
    common = ("--model", "lenet_bn", "--epochs", "2", "--dropout", "0")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    rc_on, on = train(tmp_path / "a", *common)
    assert rc_on == 0 and len(fused) == 1
    assert sum(bool(m.__dict__.get("fused_relu")) for _, m in fused[0].named_modules()) == 2
    rc_off, off = train(tmp_path / "b", *common, "--fuse", "off")
    assert rc_off == 0 and len(fused) == 1
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert [e[key] for e in on["epochs"]] == [e[key] for e in off["epochs"]]
    assert (on["test_loss"], on["test_accuracy"]) == (off["test_loss"], off["test_accuracy"])
