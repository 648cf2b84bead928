"""Training: the course's sanity checks (overfit a small set), one seed makes
a CPU run bitwise reproducible, checkpoints resume bitwise, full-batch GD,
early stopping, the eval path, and the Trainer interface."""
import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn import random as grandom
from gpucnn.trainer import array_loader, Trainer, fit


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 12, 12)).astype(np.float32), rng.integers(0, 10, n)


def _cnn(dropout=0.0):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(dropout), nn.Linear(16 * 3 * 3, 10))


def _weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_small_cnn_overfits_64_images():
    """The course's check: a net that cannot overfit a tiny set (here random
    labels) has a bug."""
    grandom.manual_seed(0)
    x, y = _data()
    model = _cnn()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=3e-3))
    records = trainer.fit(array_loader(x, y, batch_size=16), epochs=40)
    assert records[0]["train_loss"] > 2.0
    assert trainer.evaluate(array_loader(x, y, batch_size=64, shuffle=False))["accuracy"] == 1.0
    assert records[-1]["train_loss"] < 0.2 * records[0]["train_loss"]


def _run(seed, epochs, dropout=0.3):
    grandom.manual_seed(seed)
    x, y = _data()
    model = _cnn(dropout)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    trainer.fit(array_loader(x, y, batch_size=16), epochs=epochs)
    return model, trainer


def test_one_seed_makes_a_cpu_run_bitwise_reproducible():
    a, ta = _run(3, 2)
    b, tb = _run(3, 2)
    c, _ = _run(4, 2)
    wa, wb = _weights(a), _weights(b)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert [r["train_loss"] for r in ta.history] == [r["train_loss"] for r in tb.history]
    assert not np.array_equal(wa["0.weight"], _weights(c)["0.weight"])


def test_checkpoint_resume_is_bitwise_identical(tmp_path):
    x, y = _data()
    # the uninterrupted run: 2 + 2 epochs
    model, trainer = _run(5, 2)
    path = tmp_path / "ckpt.npz"
    trainer.save_checkpoint(path, epoch=2, extra={"note": "halfway"})
    probe = x[:8]
    before = trainer.predict_proba(probe)
    trainer.fit(array_loader(x, y, batch_size=16), epochs=2)
    expected = _weights(model)

    # a fresh process: other seed, other weights, then the checkpoint
    grandom.manual_seed(123)
    model2 = _cnn(0.3)
    trainer2 = Trainer(model2, optim.SGD(model2.parameters(), lr=0.05, momentum=0.9))
    info = trainer2.load_checkpoint(path)
    assert info == {"epoch": 2, "extra": {"note": "halfway"}}
    assert len(trainer2.history) == 2
    np.testing.assert_array_equal(trainer2.predict_proba(probe), before)
    records = trainer2.fit(array_loader(x, y, batch_size=16), epochs=2)
    assert [r["epoch"] for r in records] == [3, 4]
    got = _weights(model2)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert [r["train_loss"] for r in trainer2.history] == [r["train_loss"] for r in trainer.history]


def test_full_batch_gradient_descent_is_one_step_on_the_whole_set():
    grandom.manual_seed(0)
    x, y = _data(48)
    x = x.astype(np.float64)
    make = lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(200, 10)).double()
    a = make()
    b = make()
    b.load_state_dict(a.state_dict())
    Trainer(a, optim.SGD(a.parameters(), lr=0.1), full_batch=True).train_epoch(array_loader(x, y, batch_size=16))
    _, d = nn.SoftmaxCrossEntropy()(b(x), y)  # the whole set in one batch
    b.backward(d)
    optim.SGD(b.parameters(), lr=0.1).step()
    for key, value in a.state_dict().items():
        np.testing.assert_allclose(value, b.state_dict()[key], rtol=1e-12, atol=1e-14, err_msg=key)


def test_early_stopping_restores_the_best_weights(monkeypatch):
    grandom.manual_seed(0)
    x, y = _data(32)
    model = _cnn()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.05))
    scripted = iter([0.2, 0.5, 0.4, 0.45, 0.9])  # best at epoch 2, then 2 epochs without improvement
    monkeypatch.setattr(trainer, "evaluate", lambda loader: {"loss": 1.0, "accuracy": next(scripted)})
    snapshots = []
    records = trainer.fit(array_loader(x, y, 16), val_loader=[None], epochs=5, early_stopping_patience=2,
                          on_epoch_end=lambda r: snapshots.append(_weights(model)))
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    best = snapshots[1]
    assert all(np.array_equal(best[k], v) for k, v in _weights(model).items())
    with pytest.raises(ValueError, match="val_loader"):
        trainer.fit(array_loader(x, y, 16), early_stopping_patience=1)


def test_evaluate_and_predict_cache_nothing_and_keep_the_mode():
    grandom.manual_seed(0)
    x, y = _data(20)
    model = _cnn(0.5)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1))
    bn_mean = model[4].running_mean.copy()
    result = trainer.evaluate(array_loader(x, y, batch_size=8, shuffle=False))
    assert set(result) == {"loss", "accuracy"}
    assert all(m._cache is None for _, m in model.named_modules())
    assert model.training
    np.testing.assert_array_equal(model[4].running_mean, bn_mean)  # eval uses, never updates
    proba = trainer.predict_proba(x, batch_size=7)
    assert proba.shape == (20, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    # dropout off: the same up to the float32 rounding of other batch sizes
    np.testing.assert_allclose(trainer.predict_proba(x), proba, rtol=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(proba.argmax(axis=1) == y))


def test_soft_label_accuracy_uses_the_target_argmax():
    grandom.manual_seed(0)
    x, y = _data(16)
    soft = np.eye(10, dtype=np.float32)[y] * 0.7 + 0.03
    model = _cnn()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.0))
    hard = trainer.evaluate(array_loader(x, y, 16, shuffle=False))
    assert trainer.evaluate(array_loader(x, soft, 16, shuffle=False))["accuracy"] == hard["accuracy"]
    record = trainer.train_epoch(array_loader(x, soft, 8))
    assert 0.0 <= record["accuracy"] <= 1.0 and np.isfinite(record["loss"])


def test_train_epoch_record_and_progress_callback():
    grandom.manual_seed(0)
    x, y = _data(40)
    model = _cnn()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01))
    calls = []
    record = trainer.train_epoch(array_loader(x, y, batch_size=16), progress=lambda *a: calls.append(a))
    assert set(record) == {"loss", "accuracy", "seconds", "images_per_second"}
    assert [c[:2] for c in calls] == [(0, 3), (1, 3), (2, 3)]
    assert calls[-1][2] == pytest.approx(record["loss"]) and calls[-1][3] == record["accuracy"]
    assert record["images_per_second"] > 0


def test_scheduler_steps_once_per_epoch():
    grandom.manual_seed(0)
    x, y = _data(16)
    model = _cnn()
    opt = optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, scheduler=optim.StepLR(opt, step_size=1, gamma=0.5))
    trainer.fit(array_loader(x, y, 8), epochs=3, progress=True)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)


def test_fit_function_mini_batch_and_full_batch():
    grandom.manual_seed(0)
    x, y = _data(32)
    for full_batch in (False, True):
        model = _cnn()
        history = fit(model, x, y, optim.SGD(model.parameters(), lr=0.05), epochs=3, batch_size=8,
                      full_batch=full_batch, x_val=x[:8], y_val=y[:8])
        assert [r["epoch"] for r in history] == [1, 2, 3]
        assert all(r["val_accuracy"] is not None for r in history)
        assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_array_loader_draws_without_replacement():
    x = np.arange(10)[:, None].astype(np.float32)
    loader = array_loader(x, np.arange(10), batch_size=4, seed=0)
    assert len(loader) == 3
    for _ in range(2):
        seen = np.concatenate([yb for _, yb in loader])
        assert sorted(seen) == list(range(10))
    first = [yb.tolist() for _, yb in loader]
    second = [yb.tolist() for _, yb in loader]
    assert first != second  # a fresh permutation each epoch


@pytest.mark.gpu
def test_gpu_training_matches_cpu():
    x, y = _data(32)
    results = []
    for device in ("cpu", "gpu"):
        grandom.manual_seed(0)
        model = _cnn()
        trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9), device=device)
        trainer.fit(array_loader(x, y, 16, shuffle=False), epochs=2)
        results.append((trainer.history, trainer.predict_proba(x)))
    (h_cpu, p_cpu), (h_gpu, p_gpu) = results
    np.testing.assert_allclose([r["train_loss"] for r in h_gpu], [r["train_loss"] for r in h_cpu], rtol=1e-3)
    np.testing.assert_allclose(p_gpu, p_cpu, rtol=1e-3, atol=1e-4)
