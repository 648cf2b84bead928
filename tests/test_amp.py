"""Mixed precision (gpucnn.amp): the GradScaler against torch.amp.GradScaler's
written-out rules, the autocast policy's dtypes and master weights, and short
bf16/fp16 runs on the digits data against fp32."""
import numpy as np
import pytest

from gpucnn import amp, nn, optim
from gpucnn import random as grandom
from gpucnn.nn.module import Parameter
from gpucnn.trainer import array_loader, Trainer


def _opt(values=(1.0, 2.0)):
    params = [Parameter(np.array(values, np.float32))]
    return params, optim.SGD(params, lr=0.5)


def test_grad_scaler_defaults_are_torchs():
    s = amp.GradScaler()
    assert (s.get_scale(), s.get_growth_factor(), s.get_backoff_factor(), s.get_growth_interval()) == \
        (65536.0, 2.0, 0.5, 2000)
    assert s.state_dict() == {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                              "growth_interval": 2000, "_growth_tracker": 0}
    d = np.array([0.25, -1.5], np.float32)
    np.testing.assert_array_equal(s.scale(d), d * np.float32(65536.0))
    off = amp.GradScaler(enabled=False)
    assert off.scale(d) is d and off.get_scale() == 1.0 and off.state_dict() == {}


def test_unscale_then_step_then_update_follow_the_formulas():
    s = amp.GradScaler(init_scale=3.0, growth_interval=2)
    params, opt = _opt()
    params[0].grad = np.array([3.0, 6.0], np.float32)
    s.unscale_(opt)                                  # g * float32(1/3), 1/3 taken in float64
    inv = np.float32(1.0 / 3.0)
    np.testing.assert_array_equal(params[0].grad, np.array([3.0, 6.0], np.float32) * inv)
    with pytest.raises(RuntimeError, match="already been called"):
        s.unscale_(opt)
    expected = params[0].data - np.float32(0.5) * params[0].grad
    s.step(opt)                                      # finite: the step is taken
    np.testing.assert_array_equal(params[0].data, expected)
    s.update()
    assert (s.get_scale(), s.state_dict()["_growth_tracker"]) == (3.0, 1)
    params[0].grad = np.array([1.0, 1.0], np.float32)
    s.step(opt)
    s.update()                                       # the 2nd good step in a row: S * 2, tracker 0
    assert (s.get_scale(), s.state_dict()["_growth_tracker"]) == (6.0, 0)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_gradient_skips_the_step_and_backs_off(bad):
    s = amp.GradScaler(init_scale=1024.0, growth_interval=3)
    params, opt = _opt()
    for _ in range(2):                               # two good steps: tracker 2
        params[0].grad = np.ones(2, np.float32)
        s.step(opt)
        s.update()
    before = params[0].data.copy()
    params[0].grad = np.array([1.0, bad], np.float32)
    assert s.step(opt) is None                      # skipped
    np.testing.assert_array_equal(params[0].data, before)
    s.update()
    assert (s.get_scale(), s.state_dict()["_growth_tracker"]) == (512.0, 0)


def test_grad_scaler_matches_torch_on_a_sequence_of_steps():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ours = amp.GradScaler(init_scale=256.0, growth_interval=3)
    theirs = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=3)
    params, opt = _opt()
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    topt = torch.optim.SGD([w], lr=0.5)
    for step in range(25):
        g = rng.standard_normal(2).astype(np.float32) * np.float32(ours.get_scale())
        if step % 7 == 5:
            g[1] = np.inf
        params[0].grad = g.copy()
        w.grad = torch.from_numpy(g.copy())
        theirs.scale(torch.ones(()))     # torch creates its scale lazily here
        ours.step(opt)
        ours.update()
        theirs.step(topt)
        theirs.update()
        assert ours.get_scale() == theirs.get_scale(), step
        np.testing.assert_array_equal(params[0].data, w.detach().numpy())
    assert ours.state_dict() == {k: v for k, v in theirs.state_dict().items()}


def test_state_dict_round_trip():
    a = amp.GradScaler(init_scale=8.0, growth_interval=2)
    params, opt = _opt()
    params[0].grad = np.ones(2, np.float32)
    a.step(opt)
    a.update()
    b = amp.GradScaler()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 10))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_keeps_float32_masters_and_computes_low(precision):
    grandom.manual_seed(0)
    model = _cnn()
    keys = list(model.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    seen = {}
    hook = lambda m, i, o: seen.setdefault(type(m).__name__, (i.dtype, o))   # noqa: E731
    policy = amp.autocast(model, precision)
    with nn.forward_hook(hook):
        y = model(x)
    conv_out = seen["Conv2d"][1]
    if precision == "fp16":
        assert conv_out.dtype == np.float16 and y.dtype == np.float16
    else:        # bfloat16 values in float32 arrays: rounding again changes nothing
        assert conv_out.dtype == np.float32
        np.testing.assert_array_equal(amp.round_to_bfloat16(conv_out), conv_out)
    assert seen["BatchNorm2d"][1].dtype == np.float32                  # batch norm in float32
    model.backward(np.ones(y.shape, np.float32) / y.size)
    for p in model.parameters():                                       # masters and grads float32
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    assert list(model.state_dict()) == keys
    policy.remove()
    assert model(x).dtype == np.float32


def test_bfloat16_rounding_is_round_to_nearest_even():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.random.default_rng(1).standard_normal(4096).astype(np.float32) * np.float32(300)
    x[:6] = [np.nan, np.inf, -np.inf, 0.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8]   # two ties
    np.testing.assert_array_equal(amp.round_to_bfloat16(x), x.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_bf16_and_fp16_training_reach_the_fp32_accuracy_on_digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x, y = (d.images[:, None] / 16.0).astype(np.float32), d.target
    accuracy = {}
    for precision in ("fp32", "bf16", "fp16"):
        grandom.manual_seed(0)
        model = _cnn()
        trainer = Trainer(model, optim.Adam(model.parameters(), lr=1e-2), precision=precision)
        trainer.fit(array_loader(x[:1200], y[:1200], 100, seed=0), epochs=8)
        accuracy[precision] = trainer.evaluate(array_loader(x[1200:], y[1200:], 600, shuffle=False))["accuracy"]
        if precision == "fp16":
            assert trainer.scaler.get_scale() > 1.0
    # measured on the CPU: fp32 0.9330, bf16 0.9464, fp16 0.9347 (597 test images)
    assert accuracy["fp32"] > 0.9
    for precision in ("bf16", "fp16"):
        assert accuracy[precision] >= accuracy["fp32"] - 0.005, accuracy


def test_precision_choice():
    model = _cnn()
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16, fp16"):
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), precision="fp8")


def test_train_command_precision(tmp_path):
    import json

    from gpucnn import cli, serialization
    metrics, ckpt = tmp_path / "m.json", tmp_path / "c.npz"
    rc = cli.main(["train", "--dataset", "digits", "--subset", "300", "--model", "lenet_bn", "--device", "cpu",
                   "--epochs", "1", "--no-progress", "--precision", "fp16", "--metrics-out", str(metrics),
                   "--checkpoint", str(ckpt)])
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert m["settings"]["precision"] == "fp16" and m["test_accuracy"] > 0.1
    saved = serialization.read_checkpoint(ckpt)["extra"]
    assert saved["grad_scaler"]["scale"] == 65536.0
    with pytest.raises(SystemExit):
        cli.main(["train", "--precision", "int8"])
