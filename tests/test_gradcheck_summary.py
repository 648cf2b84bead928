"""gradcheck catches wrong backwards and leaves the caller's state alone;
summary counts parameters and multiply-adds as computed by hand here."""
import numpy as np
import pytest

from gpucnn import functional as F
from gpucnn import nn
from gpucnn import random as grandom
from gpucnn.gradcheck import gradcheck
from gpucnn.summary import summary


class _WrongSigmoid(nn.Sigmoid):
    def backward(self, dout):
        (y,) = self._take()
        return dout * y * (1 + y)  # wrong derivative


class _ForgetfulLinear(nn.Linear):
    def backward(self, dout):
        (x,) = self._take()
        self.weight.accumulate(dout.T @ x)  # forgets the bias gradient
        return dout @ self.weight.data


def test_gradcheck_flags_a_wrong_input_gradient(rng):
    ok, report = gradcheck(_WrongSigmoid(), rng.standard_normal((3, 4)))
    assert not ok
    assert report["input"].worst_relative > 0.1
    assert "FAIL" in str(report)


def test_gradcheck_flags_a_missing_parameter_gradient(rng):
    ok, report = gradcheck(_ForgetfulLinear(3, 2), rng.standard_normal((4, 3)))
    assert not ok
    assert report["weight"].worst_relative < 1e-6 and report["input"].worst_relative < 1e-6
    assert report["bias"].worst_relative == pytest.approx(1.0)


def test_gradcheck_of_a_function_with_several_inputs(rng):
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))

    def backward(g, x, w):
        return (F.conv2d_backward_data(g, w, x.shape, stride=2, padding=1),
                F.conv2d_backward_filter(g, x, w.shape, stride=2, padding=1))

    ok, report = gradcheck(lambda x, w: F.conv2d(x, w, stride=2, padding=1), (x, w), backward=backward,
                           max_elements=40)
    assert ok, report
    assert [e.name for e in report.entries] == ["input 0", "input 1"]

    def off_by_one_percent(g, x, w):
        dx, dw = backward(g, x, w)
        return dx * 1.01, dw

    ok, report = gradcheck(lambda x, w: F.conv2d(x, w, stride=2, padding=1), (x, w), backward=off_by_one_percent,
                           max_elements=10)
    assert not ok and report["input 0"].worst_relative > 5e-3 and report["input 1"].worst_relative < 1e-6


def test_gradcheck_leaves_the_module_and_rng_alone(rng):
    grandom.manual_seed(7)
    layer = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    state = grandom.get_state()
    ok, report = gradcheck(layer, rng.standard_normal((5, 4)), max_elements=6)
    assert ok, report
    assert report["input"].checked == 6 and report["0.weight"].checked == 6 and report["0.bias"].checked == 3
    assert grandom.get_state() == state
    assert layer[0].weight.grad is None and layer[0].weight.data.dtype == np.float32
    assert all(np.array_equal(v, layer.state_dict()[k]) for k, v in before.items())


def test_summary_counts_conv_parameters_with_bias():
    s = summary(nn.Conv2d(3, 4, 5), (3, 32, 32))
    assert s.total_params == (5 * 5 * 3 + 1) * 4 == 304
    assert s.rows[0].output_shape == (1, 4, 28, 28)
    assert s.total_macs == 28 * 28 * 4 * 3 * 5 * 5


def _lenet():
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def test_lenet_summary():
    model = _lenet()
    model.train()
    s = summary(model, (1, 28, 28))
    conv1, conv2 = (5 * 5 * 1 + 1) * 6, (5 * 5 * 6 + 1) * 16
    fc = (400 + 1) * 120 + (120 + 1) * 84 + (84 + 1) * 10
    assert s.total_params == conv1 + conv2 + fc == 61706
    assert [r.name for r in s.rows] == [str(i) for i in range(12)]
    assert [r.output_shape[1:] for r in s.rows][:7] == [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10),
                                                        (16, 10, 10), (16, 5, 5), (400,)]
    assert s.total_macs == 28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    text = str(s)
    assert "0 (Conv2d)" in text and "(None, 16, 5, 5)" in text and "Total params: 61,706" in text
    assert all(m.training for _, m in model.named_modules())  # modes restored


def test_summary_is_side_effect_free_and_sees_nested_layers():
    grandom.manual_seed(0)
    model = nn.Sequential(nn.Residual(nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4)),
                                      projection=nn.Conv2d(2, 4, 1, stride=2)),
                          nn.Dropout(0.5))
    state = grandom.get_state()
    running = model[0].body[1].running_mean.copy()
    s = summary(model, (2, 8, 8))
    assert [r.name for r in s.rows] == ["0.body.0", "0.body.1", "0.projection", "1"]
    assert s.total_params == (9 * 2 + 1) * 4 + 2 * 4 + (2 + 1) * 4
    assert grandom.get_state() == state
    np.testing.assert_array_equal(model[0].body[1].running_mean, running)
    assert int(model[0].body[1].num_batches_tracked) == 0
