"""Losses: values against formulas written out here and against PyTorch,
gradients against central differences, stability, and the course's initial
loss sanity check (ln 10 for a 10-class classifier with small weights)."""
import math

import numpy as np
import pytest

from gpucnn import nn
from gpucnn import random as grandom
from gpucnn.gradcheck import gradcheck
from gpucnn.nn import init


def _naive_cross_entropy(logits, q):
    """-mean_n sum_c q log softmax, one sample at a time in plain Python floats."""
    total = 0.0
    for row, qrow in zip(logits.tolist(), q.tolist()):
        norm = math.log(sum(math.exp(v) for v in row))
        total -= sum(qc * (v - norm) for v, qc in zip(row, qrow))
    return total / len(logits)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_value_with_class_indices(rng, smoothing):
    logits = rng.standard_normal((6, 4))
    target = rng.integers(0, 4, 6)
    q = np.full((6, 4), smoothing / 4)
    q[np.arange(6), target] += 1 - smoothing
    loss, _ = nn.SoftmaxCrossEntropy(label_smoothing=smoothing)(logits, target)
    assert isinstance(loss, float)
    assert loss == pytest.approx(_naive_cross_entropy(logits, q), rel=1e-12)


def test_cross_entropy_soft_labels(rng):
    logits = rng.standard_normal((5, 3))
    q = rng.dirichlet(np.ones(3), size=5)
    loss, dlogits = nn.SoftmaxCrossEntropy()(logits, q)
    assert loss == pytest.approx(_naive_cross_entropy(logits, q), rel=1e-12)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(dlogits, (p - q) / 5, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_gradient_check(rng, soft, smoothing):
    loss_fn = nn.SoftmaxCrossEntropy(label_smoothing=smoothing)
    target = rng.dirichlet(np.ones(5), size=4) if soft else rng.integers(0, 5, 4)
    logits = rng.standard_normal((4, 5))
    # gradcheck needs an array-valued function: the loss as a (1,) array
    ok, report = gradcheck(lambda z: np.array([loss_fn(z, target)[0]]), logits,
                           backward=lambda g, z: g[0] * loss_fn(z, target)[1])
    assert ok, report


def test_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((7, 10))
    for target in (rng.integers(0, 10, 7), rng.dirichlet(np.ones(10), size=7)):
        for smoothing in (0.0, 0.15):
            z = torch.tensor(logits, requires_grad=True)
            expected = torch.nn.functional.cross_entropy(z, torch.tensor(target), label_smoothing=smoothing)
            expected.backward()
            loss, dlogits = nn.SoftmaxCrossEntropy(smoothing)(logits, target)
            assert loss == pytest.approx(expected.item(), rel=1e-12)
            np.testing.assert_allclose(dlogits, z.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        loss, dlogits = nn.SoftmaxCrossEntropy()(logits, np.array([0, 0]))
    assert loss == pytest.approx(1e4, rel=1e-6)  # sample 0: 0, sample 1: 2e4, mean 1e4
    assert np.isfinite(dlogits).all() and dlogits.dtype == np.float32


def test_cross_entropy_rejects_bad_targets():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 4\)"):
        nn.SoftmaxCrossEntropy()(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="2 class indices"):
        nn.SoftmaxCrossEntropy()(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="target must be"):
        nn.SoftmaxCrossEntropy()(logits, np.array([0.0, 1.0, 2.0]))


def test_mse_is_half_the_mean_squared_error(rng):
    y, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss, _ = nn.MSELoss()(y, t)
    assert loss == pytest.approx(0.5 * sum((a - b) ** 2 for a, b in zip(y.ravel(), t.ravel())) / 12, rel=1e-12)
    ok, report = gradcheck(lambda z: np.array([nn.MSELoss()(z, t)[0]]), y,
                           backward=lambda g, z: g[0] * nn.MSELoss()(z, t)[1])
    assert ok, report
    with pytest.raises(ValueError, match="differ"):
        nn.MSELoss()(y, t[:2])


def test_initial_loss_of_small_softmax_classifier_is_ln10(rng):
    """The course's first sanity check: small random weights -> uniform
    predictions -> loss ln(10) = 2.303 for 10 classes."""
    grandom.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    init.normal_(model[1].weight, std=0.01)
    init.zeros_(model[1].bias)
    x = rng.standard_normal((256, 3, 8, 8)).astype(np.float32)
    loss, _ = nn.SoftmaxCrossEntropy()(model(x), rng.integers(0, 10, 256))
    assert loss == pytest.approx(math.log(10), abs=0.02)
