"""Babysitting tools: `gpucnn check` (gpucnn.sanity), `gpucnn lr-find`
(gpucnn.lr_finder) and `gpucnn train --monitor` (gpucnn.monitor), on the
8x8 digits and tiny hand-built models (each test a few seconds at most)."""
import copy
import json
import math

import numpy as np
import pytest

from gpucnn import cli, lr_finder, monitor, nn, optim, recipes, sanity
from gpucnn import random as grandom
from gpucnn.data import load_dataset
from gpucnn.nn.module import _forward_hooks, forward_hook
from gpucnn.trainer import array_loader, Trainer

pytest.importorskip("sklearn")

DIGITS = ["--dataset", "digits", "--subset", "400", "--model", "lenet5", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return recipes.prepare_data(ds, 0.0, 400, 0)


class Scale(nn.Module):
    """y = 2x; with broken=True its backward returns 1.5 * dout instead of 2 * dout."""

    def __init__(self, broken=False):
        super().__init__()
        self.broken = broken

    def forward(self, x):
        return 2.0 * x

    def backward(self, dout):
        return (1.5 if self.broken else 2.0) * dout


def small_net(broken=False, seed=0, dropout=0.0):
    grandom.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1), Scale(broken), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
              nn.Linear(64, 32), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(32, 10))


def run_json(tmp_path, *argv):
    out = tmp_path / "out.json"
    rc = cli.main([*argv, "--json", str(out)])
    return rc, (json.loads(out.read_text()) if out.exists() else None)


# ---- gpucnn check -------------------------------------------------------------
def test_check_passes_on_a_healthy_model(tmp_path, capsys):
    rc, result = run_json(tmp_path, "check", *DIGITS)
    out = capsys.readouterr().out
    assert rc == 0 and result["passed"] is True
    names = [c["name"] for c in result["checks"]]
    assert names == ["inputs zero-centred", "inputs unit-scaled", "initial loss", "gradient check (float64)",
                     "overfit 64 images", "loss rises with weight decay"]
    assert all(set(c) == {"name", "value", "expected", "passed"} and c["passed"] for c in result["checks"])
    initial = result["checks"][2]
    assert abs(initial["value"] - math.log(10)) <= 0.1 * math.log(10)
    assert result["checks"][4]["value"] >= 0.99
    assert out.count("PASS") == 6 and "FAIL" not in out and "6/6 checks passed" in out


def test_check_fails_overfit_with_a_learning_rate_of_10(tmp_path, capsys):
    rc, result = run_json(tmp_path, "check", *DIGITS, "--lr", "10", "--overfit-steps", "60")
    assert rc == 1 and result["passed"] is False
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["overfit 64 images"]["passed"] is False
    assert checks["overfit 64 images"]["value"] < 0.5
    assert checks["initial loss"]["passed"] and checks["gradient check (float64)"]["passed"]
    assert "FAIL  overfit 64 images" in capsys.readouterr().out


def test_gradient_check_catches_a_broken_backward(digits):
    x = digits.x_train[:2]
    healthy = sanity.check_gradients(small_net(broken=False), x)
    broken = sanity.check_gradients(small_net(broken=True), x)
    assert healthy.passed and healthy.value < 1e-5
    assert not broken.passed and broken.value > 0.1  # 1.5 instead of 2: a 25% error upstream
    assert "0.weight" in broken.detail  # the parameters below the broken layer are named


def test_broken_backward_fails_the_whole_run(digits):
    def optimizer(params, wd):
        return optim.Adam(params, lr=1e-2, weight_decay=wd)
    results = sanity.run_checks(lambda regularized: small_net(broken=True), optimizer, digits.x_train,
                                digits.y_train, 10, lr=1e-2, overfit_steps=60)
    by_name = {r.name: r for r in results}
    assert not by_name["gradient check (float64)"].passed
    assert by_name["initial loss"].passed and by_name["inputs zero-centred"].passed


def test_weight_decay_check_fails_when_the_optimizer_ignores_it(digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    build = lambda regularized: small_net()  # noqa: E731
    wired = sanity.check_weight_decay(build, lambda p, wd: optim.SGD(p, lr=0.05, weight_decay=wd), x, y, 0.05)
    ignored = sanity.check_weight_decay(build, lambda p, wd: optim.SGD(p, lr=0.05), x, y, 0.05)
    assert wired.passed and wired.value > 0.01
    assert not ignored.passed and ignored.value == 0.0


def test_initial_loss_check_fails_for_overconfident_init(digits):
    x, y = digits.x_train[:256], digits.y_train[:256]
    good = small_net()
    assert sanity.check_initial_loss(good, x, y, 10).passed
    bad = small_net()
    bad[-1].weight.data *= 50  # huge logits: confident, mostly wrong predictions
    result = sanity.check_initial_loss(bad, x, y, 10)
    assert not result.passed and result.value > 3 * math.log(10)


def test_preprocessing_check(digits):
    assert all(r.passed for r in sanity.check_preprocessing(digits.x_train))
    raw = load_dataset("digits").x_train[:400]  # in [0, 1], not normalized
    centred, scaled = sanity.check_preprocessing(raw)
    assert not centred.passed and centred.value > 0.1
    assert not scaled.passed


def test_check_user_mistakes(capsys):
    assert cli.main(["check", *DIGITS, "--val-split", "0", "--tiny", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpucnn check: error: ") and "\n" not in err
    assert "--tiny 1000 exceeds the 400 training images" in err
    for argv in (["--overfit-steps", "0"], ["--init-tolerance", "1"], ["--lr", "0"]):
        with pytest.raises(SystemExit) as exc:  # refused by argparse, before anything runs
            cli.main(["check", *DIGITS, *argv])
        assert exc.value.code == 2
        assert f"argument {argv[0]}: must be" in capsys.readouterr().err


# ---- gpucnn lr-find ---------------------------------------------------------------
def _adam_trainer(x, y):
    net = small_net(dropout=0.3)
    trainer = Trainer(net, optim.Adam(net.parameters(), lr=1e-3))
    trainer.train_epoch(array_loader(x, y, 64, seed=0))  # the optimizer now has state
    return trainer


def test_lr_find_sweeps_stops_on_divergence_and_restores_everything(digits):
    x, y = digits.x_train, digits.y_train
    trainer = _adam_trainer(x, y)
    model_before = trainer.model.state_dict()
    opt_before = copy.deepcopy(trainer.optimizer.state_dict())
    rng_before = grandom.get_state()
    result = lr_finder.lr_find(trainer, array_loader(x, y, 32, seed=1), 1e-5, 100.0, steps=80)
    lrs = np.array(result.lrs)
    ratio = (100.0 / 1e-5) ** (1 / 79)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], ratio, rtol=1e-12)
    assert lrs[0] == pytest.approx(1e-5)
    assert result.diverged and len(lrs) < 80  # Adam at lr ~100 blows up
    best = int(np.nanargmin(result.smoothed))
    assert result.suggested_lr == pytest.approx(lrs[best] / 10) and result.rule == lr_finder.RULE
    assert result.smoothed[best] < result.smoothed[0]  # the loss fell before it diverged
    after = trainer.model.state_dict()
    assert after.keys() == model_before.keys()
    assert all(np.array_equal(after[k], model_before[k]) for k in after)
    opt_after = trainer.optimizer.state_dict()
    assert opt_after["param_groups"] == opt_before["param_groups"]  # lr 1e-3 again
    for i, state in opt_before["state"].items():
        for key, value in state.items():
            assert np.array_equal(opt_after["state"][i][key], value)
    assert grandom.get_state() == rng_before
    assert all(p.grad is None for p in trainer.model.parameters())


def test_lr_find_command_writes_json_and_plot(tmp_path, capsys):
    plot = tmp_path / "lr.png"
    rc, result = run_json(tmp_path, "lr-find", *DIGITS, "--steps", "30", "--batch-size", "32",
                          "--min", "1e-5", "--max", "1", "--plot", str(plot))
    assert rc == 0
    assert {"suggested_lr", "rule", "lrs", "losses"} <= result.keys()
    assert len(result["lrs"]) == len(result["losses"]) <= 30
    assert 1e-6 <= result["suggested_lr"] <= 0.1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "suggested lr" in capsys.readouterr().out


def test_lr_find_user_mistake(capsys):
    assert cli.main(["lr-find", *DIGITS, "--min", "1", "--max", "0.1"]) == 2
    assert "gpucnn lr-find: error: need 0 < --min < --max" in capsys.readouterr().err


# ---- gpucnn train --monitor -----------------------------------------------------------
def test_monitor_statistics_match_a_direct_computation(digits):
    x, y = digits.x_train[:48], digits.y_train[:48]
    net = small_net()
    reference = copy.deepcopy(net)
    trainer = Trainer(net, optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
    trainer.monitor = monitor.TrainingMonitor(net)
    trainer.train_epoch(array_loader(x, y, 48, shuffle=False))  # one step: the last step is the only one
    record = trainer.monitor.history[-1]
    assert not _forward_hooks  # the hook lives only during the epoch

    outputs = {}
    with forward_hook(lambda m, _x, out: outputs.setdefault(id(m), out)):
        logits = reference(x)
    reference.backward(trainer.loss_fn(logits, y)[1])
    names = {id(m): name for name, m in reference.named_modules() if name}
    for layer_id, out in outputs.items():
        if layer_id not in names:
            continue
        stats = record["activations"][names[layer_id]]
        assert stats["mean"] == pytest.approx(float(out.mean(dtype=np.float64)), rel=1e-4, abs=1e-6)
        assert stats["std"] == pytest.approx(float(out.std(dtype=np.float64)), rel=1e-4)
        if stats["type"] == "ReLU":
            assert stats["zero_fraction"] == pytest.approx(float((out == 0).mean()))
        else:
            assert stats["zero_fraction"] is None
    before = dict(reference.named_parameters())
    for name, p in net.named_parameters():
        stats = record["parameters"][name]
        assert stats["grad_norm"] == pytest.approx(float(np.linalg.norm(before[name].grad)), rel=1e-4)
        ratio = np.linalg.norm(p.data - before[name].data) / np.linalg.norm(p.data)
        assert stats["update_ratio"] == pytest.approx(float(ratio), rel=1e-4)

    n_before = len(trainer.monitor.history)
    trainer.evaluate(array_loader(x, y, 48, shuffle=False))  # eval forwards are not recorded
    assert len(trainer.monitor.history) == n_before and not _forward_hooks


def test_monitor_warns_on_dead_relus_and_large_updates(digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    net = small_net()
    net[5].bias.data[:] = -100.0  # the Linear before the second ReLU: every output negative
    trainer = Trainer(net, optim.SGD(net.parameters(), lr=5.0))
    trainer.monitor = monitor.TrainingMonitor(net)
    trainer.train_epoch(array_loader(x, y, 32, seed=0))
    lines = monitor.warnings(trainer.monitor.history[-1])
    assert any(line.startswith("ReLU 6 outputs zero for 100.0%") for line in lines)
    # nothing flows back through the dead ReLUs: the layers below them do not move
    assert any("update/weight ratio of 0.weight is 0.00e+00" in line and "zero gradient" in line
               for line in lines)
    net = small_net()
    trainer = Trainer(net, optim.SGD(net.parameters(), lr=5.0))
    trainer.monitor = monitor.TrainingMonitor(net)
    trainer.train_epoch(array_loader(x, y, 32, seed=0))
    lines = monitor.warnings(trainer.monitor.history[-1])
    assert any("update/weight ratio of 0.weight" in line and "lr too large" in line for line in lines)
    healthy = Trainer(small_net(), optim.Adam(small_net().parameters(), lr=1e-3))
    assert monitor.warnings({"parameters": {"w": {"shape": [3, 3], "update_ratio": 1e-3}},
                             "activations": {"r": {"zero_fraction": 0.5}}}) == []
    assert healthy.monitor is None  # off by default


def test_train_monitor_writes_json_plot_and_warnings(tmp_path, capsys):
    metrics, plot = tmp_path / "m.json", tmp_path / "health.png"
    rc = cli.main(["train", *DIGITS, "--epochs", "2", "--optimizer", "sgd", "--lr", "3", "--no-progress",
                   "--metrics-out", str(metrics), "--monitor-plot", str(plot)])
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert [r["epoch"] for r in m["monitor"]] == [1, 2]
    first = m["monitor"][0]
    assert set(first["parameters"]) == {name for name, _ in recipes.make_trainer(
        "lenet5", (1, 8, 8), 10).model.named_parameters()}
    assert {s["type"] for s in first["activations"].values()} >= {"Conv2d", "ReLU", "MaxPool2d", "Linear"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "warning: update/weight ratio" in capsys.readouterr().out  # lr 3 with plain SGD is far too large
    rc = cli.main(["train", *DIGITS, "--epochs", "1", "--no-progress", "--metrics-out", str(metrics)])
    assert rc == 0 and "monitor" not in json.loads(metrics.read_text())


def test_monitor_keeps_statistics_as_arrays_until_the_epoch_ends(digits, monkeypatch):
    """The GPU promise, checked on the CPU path: no host copy (backend.to_cpu)
    and no Python number among the statistics until end_epoch."""
    from gpucnn import backend
    x, y = digits.x_train[:64], digits.y_train[:64]
    net = small_net()
    trainer = Trainer(net, optim.Adam(net.parameters(), lr=1e-3))
    watch = trainer.monitor = monitor.TrainingMonitor(net)
    copies = []
    real_to_cpu = backend.to_cpu
    monkeypatch.setattr(backend, "to_cpu", lambda a: copies.append(a) or real_to_cpu(a))
    real_end = watch.end_epoch

    def end_epoch():
        assert copies == []  # nothing went to the host during the steps
        values = [v for sums, squares, _, zeros in watch._acts.values() for v in sums + squares + zeros]
        values += [v for norms in watch._grads.values() for v in norms]
        assert values and all(isinstance(v, (np.ndarray, np.generic)) for v in values)
        return real_end()
    monkeypatch.setattr(watch, "end_epoch", end_epoch)
    trainer.train_epoch(array_loader(x, y, 16, shuffle=False))
    assert copies and len(watch.history) == 1
