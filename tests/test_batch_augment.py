"""Batch augmentations in array code (gpucnn.data.transforms) on NumPy and, marked gpu, on CuPy.

- On NumPy with a NumPy Generator they equal the loop versions they replaced
  bitwise (kept here as the reference) and leave the generator in the same state.
- With injected draws (a BatchDraws subclass) the deterministic part of each
  transform is checked exactly.
- The random part is checked by its statistics, for three sources of draws:
  NumPy's calls ("numpy"), the device-draw code run on a NumPy generator
  ("device-code") and, on a GPU, CuPy's generator ("cupy", not yet run).
"""
import numpy as np
import pytest

from gpucnn import backend
from gpucnn import random as grandom
from gpucnn.data import CutMix, Cutout, GaussianNoise, MixUp, RandomCrop, RandomHorizontalFlip, build_augmentation
from gpucnn.data.random_draws import BatchDraws, DeviceDraws, batch_draws
from gpucnn.data.transforms import AUGMENTATIONS


# ---- the loop versions these transforms replaced (the reference) -----------------------------
def _loop_crop(x, rng, p):
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oy, ox = rng.integers(0, 2 * p + 1, size=n), rng.integers(0, 2 * p + 1, size=n)
    out = np.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
    return out


def _loop_flip(x, rng, p=0.5):
    flip = rng.random(len(x)) < p
    out = x.copy()
    out[flip] = x[flip][..., ::-1]
    return out


def _loop_boxes(rng, n, h, w, bh, bw):
    cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
    return (np.clip(cy - bh // 2, 0, h), np.clip(cx - bw // 2, 0, w),
            np.clip(cy - bh // 2 + bh, 0, h), np.clip(cx - bw // 2 + bw, 0, w))


def _loop_cutout(x, rng, size):
    n, _, h, w = x.shape
    y0, x0, y1, x1 = _loop_boxes(rng, n, h, w, size, size)
    out = x.copy()
    for i in range(n):
        out[i, :, y0[i]:y1[i], x0[i]:x1[i]] = 0
    return out


def _loop_mixup(x, y, rng, c, alpha=0.2):
    lam = np.float32(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    t = np.eye(c, dtype=np.float32)[y]
    return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]


def _loop_cutmix(x, y, rng, c, alpha=1.0):
    n, _, h, w = x.shape
    cut = np.sqrt(1.0 - rng.beta(alpha, alpha))
    (y0,), (x0,), (y1,), (x1,) = _loop_boxes(rng, 1, h, w, int(h * cut), int(w * cut))
    perm = rng.permutation(n)
    out = x.copy()
    out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    kept = np.float32(1.0 - (y1 - y0) * (x1 - x0) / (h * w))
    t = np.eye(c, dtype=np.float32)[y]
    return out, kept * t + (1 - kept) * t[perm]


def _reference(name, x, y, rng, size):
    if name == "crop":
        return _loop_crop(x, rng, max(1, size // 8)), y
    if name == "flip":
        return _loop_flip(x, rng), y
    if name == "noise":
        return x + rng.normal(0.0, 0.1, size=x.shape).astype(x.dtype), y
    if name == "cutout":
        return _loop_cutout(x, rng, max(2, size // 4)), y
    if name == "mixup":
        return _loop_mixup(x, y, rng, 10)
    return _loop_cutmix(x, y, rng, 10)


@pytest.mark.parametrize("name", AUGMENTATIONS)
@pytest.mark.parametrize("shape, dtype, strided", [
    ((1, 1, 5, 7), np.float32, False), ((7, 3, 8, 8), np.float32, True),
    ((5, 2, 9, 6), np.float64, False), ((16, 1, 28, 28), np.float32, False)])
def test_numpy_results_equal_the_loop_versions_bitwise(name, shape, dtype, strided):
    aug = build_augmentation([name], 10, shape[-1])
    for seed in range(4):
        data = np.random.default_rng(100 + seed)
        x = data.random((shape[0], shape[1], shape[2], 2 * shape[3])).astype(dtype)
        x = x[..., ::2] if strided else np.ascontiguousarray(x[..., :shape[3]])   # non-contiguous input
        y = data.integers(0, 10, shape[0])
        x_before = x.copy()
        r_new, r_ref = np.random.default_rng(seed), np.random.default_rng(seed)
        got_x, got_y = aug(x, y, r_new)
        want_x, want_y = _reference(name, x, y, r_ref, shape[-1])
        assert got_x.dtype == want_x.dtype and got_y.dtype == want_y.dtype
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)
        assert r_new.bit_generator.state == r_ref.bit_generator.state     # the same draws, in the same order
        np.testing.assert_array_equal(x, x_before)                        # never in place


# ---- exact results with injected draws --------------------------------------------------------
class FixedDraws(BatchDraws):
    """Draws given by the test, in call order per kind."""

    def __init__(self, **values):
        super().__init__(None, np)
        self.values = {k: list(v) for k, v in values.items()}

    def _next(self, kind):
        return np.asarray(self.values[kind].pop(0))

    def integers(self, high, n):
        v = self._next("integers")
        assert v.shape == (n,) and ((0 <= v) & (v < high)).all()
        return v

    def uniform(self, n):
        return self._next("uniform")

    def normal(self, std, shape, dtype):
        return (self._next("normal") * std).astype(dtype)

    def beta(self, alpha):
        return self._next("beta").astype(np.float64)

    def permutation(self, n):
        return self._next("permutation")


def test_injected_draws_give_exact_results():
    x = np.arange(2 * 1 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4) + 1
    y = np.array([0, 2])
    out, _ = RandomCrop(padding=1)(x, y, FixedDraws(integers=[[0, 2], [0, 1]]))
    np.testing.assert_array_equal(out[0, 0], [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7]])   # shifted down-right
    np.testing.assert_array_equal(out[1, 0], [[17, 18, 19, 20], [21, 22, 23, 24], [0, 0, 0, 0]])
    out, _ = RandomHorizontalFlip(p=0.5)(x, y, FixedDraws(uniform=[[0.7, 0.2]]))
    np.testing.assert_array_equal(out, np.stack([x[0], x[1, :, :, ::-1]]))
    out, _ = GaussianNoise(std=0.5)(x, y, FixedDraws(normal=[np.full(x.shape, 2.0)]))
    np.testing.assert_array_equal(out, x + 1)
    # Cutout size 2, centres (row 0, col 3) and (row 2, col 1):
    # boxes rows [-1, 1) -> [0, 1), cols [2, 4); rows [1, 3), cols [0, 2)
    out, _ = Cutout(size=2)(x, y, FixedDraws(integers=[[0, 2], [3, 1]]))
    want = x.copy()
    want[0, :, 0:1, 2:4] = 0
    want[1, :, 1:3, 0:2] = 0
    np.testing.assert_array_equal(out, want)
    out, t = MixUp(num_classes=3)(x, y, FixedDraws(beta=[0.25], permutation=[[1, 0]]))
    np.testing.assert_array_equal(out, np.float32(0.25) * x + np.float32(0.75) * x[::-1])
    np.testing.assert_array_equal(t, [[0.25, 0, 0.75], [0.75, 0, 0.25]])
    # CutMix lam 0.75: box sides int(3 * 0.5) = 1, int(4 * 0.5) = 2; centre (1, 1): rows [1, 2), cols [0, 2)
    out, t = CutMix(num_classes=3)(x, y, FixedDraws(beta=[0.75], integers=[[1], [1]], permutation=[[1, 0]]))
    want = x.copy()
    want[:, :, 1:2, 0:2] = x[::-1, :, 1:2, 0:2]
    np.testing.assert_array_equal(out, want)
    kept = np.float32(1 - 2 / 12)
    np.testing.assert_array_equal(t, [[kept, 0, 1 - kept], [1 - kept, 0, kept]])


def test_bad_labels_and_generators_are_named():
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"MixUp\(alpha=0.2\): class indices must be in \[0, 3\), got 0..3"):
        MixUp(3)(x, np.array([0, 3]), np.random.default_rng(0))

    class NotNumpy:
        pass
    with pytest.raises(TypeError, match=r"Cutout\(size=2\): a NumPy batch \(2, 1, 4, 4\) needs a numpy.random"):
        Cutout(2)(x, None, NotNumpy())


# ---- statistics of the random draws ----------------------------------------------------------
DRAW_SOURCES = ["numpy", "device-code", pytest.param("cupy", marks=pytest.mark.gpu)]


class _Source:
    """Arrays and draws for one source of random numbers (see the module docstring)."""

    def __init__(self, kind, seed=0):
        self.kind = kind
        if kind == "cupy":
            grandom.manual_seed(seed)
            self.xp, self.rng = backend.cupy, grandom.device_generator(backend.cupy)
        elif kind == "device-code":
            self.xp, self.rng = np, DeviceDraws(np.random.default_rng(seed), np)
        else:
            self.xp, self.rng = np, np.random.default_rng(seed)

    def put(self, a):
        return backend.to_gpu(a) if self.kind == "cupy" else a

    @staticmethod
    def get(a):
        return backend.to_cpu(a)


def _within(value, expected, sigma, k=5.0):
    assert abs(value - expected) <= k * sigma, f"{value} vs {expected} +- {k} * {sigma}"


@pytest.mark.parametrize("kind", DRAW_SOURCES)
def test_flip_rate(kind):
    s, n, p = _Source(kind), 20000, 0.3
    x = s.put(np.tile(np.array([1, 2], np.float32), (n, 1, 1, 1)))
    out = s.get(RandomHorizontalFlip(p)(x, None, s.rng)[0])
    flipped = out[:, 0, 0, 0] == 2
    assert np.array_equal(out[flipped, 0, 0], np.tile([2, 1], (flipped.sum(), 1)))
    _within(flipped.mean(), p, np.sqrt(p * (1 - p) / n))


@pytest.mark.parametrize("kind", DRAW_SOURCES)
def test_crop_offsets_are_uniform(kind):
    s, n, p, h, w = _Source(kind), 10000, 2, 6, 5
    pixel_id = (np.arange(h * w, dtype=np.float32) + 1).reshape(1, 1, h, w)   # which source pixel landed where
    out = s.get(RandomCrop(p)(s.put(np.repeat(pixel_id, n, axis=0)), None, s.rng)[0])
    centre = out[:, 0, h // 2, w // 2].astype(int) - 1                        # always inside for p <= 2
    oy, ox = centre // w - h // 2 + p, centre % w - w // 2 + p
    for offsets in (oy, ox):
        counts = np.bincount(offsets, minlength=2 * p + 1)
        assert len(counts) == 2 * p + 1
        q = 1 / (2 * p + 1)
        for c in counts:
            _within(c / n, q, np.sqrt(q * (1 - q) / n))
    # and every crop is that window of the zero-padded image
    padded = np.pad(pixel_id[0, 0], p)
    for i in range(0, n, 997):
        np.testing.assert_array_equal(out[i, 0], padded[oy[i]:oy[i] + h, ox[i]:ox[i] + w])


@pytest.mark.parametrize("kind", DRAW_SOURCES)
def test_cutout_box_positions(kind):
    s, n, h, w, size = _Source(kind), 8000, 7, 6, 3
    out = s.get(Cutout(size)(s.put(np.ones((n, 2, h, w), np.float32)), None, s.rng)[0])
    zero = out[:, 0] == 0
    assert np.array_equal(zero, out[:, 1] == 0)                # every channel, the same box
    # P(pixel (r, c) is cut) = P(r in box rows) P(c in box columns), centres uniform over the image
    p_row = np.array([np.mean([(cy - size // 2 <= r < cy - size // 2 + size) for cy in range(h)]) for r in range(h)])
    p_col = np.array([np.mean([(cx - size // 2 <= c < cx - size // 2 + size) for cx in range(w)]) for c in range(w)])
    expected = np.outer(p_row, p_col)
    rate = zero.mean(axis=0)
    for r in range(h):
        for c in range(w):
            _within(rate[r, c], expected[r, c], np.sqrt(expected[r, c] * (1 - expected[r, c]) / n))
    rows, cols = zero.any(axis=2), zero.any(axis=1)           # each box is a rectangle
    assert np.array_equal(zero, rows[:, :, None] & cols[:, None, :])


class RecordingDraws(BatchDraws):
    """Passes another source's draws through, keeping the beta values and permutations (on the host)."""

    def __init__(self, inner):
        super().__init__(inner.rng, inner.xp)
        self.inner, self.betas, self.perms = inner, [], []

    def beta(self, alpha):
        lam = self.inner.beta(alpha)
        self.betas.append(float(backend.to_cpu(lam)))
        return lam

    def permutation(self, n):
        perm = self.inner.permutation(n)
        self.perms.append(backend.to_cpu(perm))
        return perm


@pytest.mark.parametrize("kind", DRAW_SOURCES)
@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_is_beta(kind, alpha):
    s = _Source(kind, seed=int(alpha * 10))
    x_host = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
    x, y = s.put(x_host), s.put(np.arange(3))
    draws = RecordingDraws(batch_draws(s.rng, x))
    eye = np.eye(3, dtype=np.float32)
    for _ in range(3000):
        xm, t = (s.get(a) for a in MixUp(3, alpha)(x, y, draws))
        lam, perm = np.float32(draws.betas[-1]), draws.perms[-1]
        np.testing.assert_array_equal(t, lam * eye + (1 - lam) * eye[perm])      # the drawn lam and perm, used
        np.testing.assert_array_equal(xm, lam * x_host + (1 - lam) * x_host[perm])
    lams = np.array(draws.betas)
    mean, var = 0.5, 1 / (4 * (2 * alpha + 1))
    _within(lams.mean(), mean, np.sqrt(var / len(lams)))
    _within(lams.var(), var, 0.05 * var)                      # 0.05 var = 5 standard errors of the variance
    from scipy import stats
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


@pytest.mark.parametrize("kind", DRAW_SOURCES)
def test_permutations_are_uniform(kind):
    s, n = _Source(kind), 6000
    draws = batch_draws(s.rng, s.put(np.zeros((3, 1, 1, 1), np.float32)))
    seen = {}
    for _ in range(n):
        key = tuple(s.get(draws.permutation(3)).tolist())
        seen[key] = seen.get(key, 0) + 1
    assert sorted(seen) == sorted([(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
    for c in seen.values():
        _within(c / n, 1 / 6, np.sqrt(5 / 36 / n))


@pytest.mark.parametrize("kind", DRAW_SOURCES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_std(kind, dtype):
    s, n = _Source(kind), 200_000
    out, _ = GaussianNoise(std=0.3)(s.put(np.zeros((n // 100, 1, 10, 10), dtype)), None, s.rng)
    out = s.get(out)
    assert out.dtype == dtype
    _within(out.mean(), 0.0, 0.3 / np.sqrt(n))
    _within(out.std(), 0.3, 0.3 / np.sqrt(2 * n))


@pytest.mark.parametrize("kind", DRAW_SOURCES)
def test_cutmix_box_matches_label_weights(kind):
    s, h, w, n = _Source(kind), 8, 6, 4
    x = s.put(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, h, w), np.float32))
    y = s.put(np.arange(n))
    areas = []
    for _ in range(300):
        out, t = (s.get(a) for a in CutMix(n, alpha=1.0)(x, y, s.rng))
        source = out[:, 0]                                     # which image each pixel came from
        pasted = source != np.arange(n)[:, None, None]
        rows, cols = pasted.any(axis=2), pasted.any(axis=1)
        if pasted.any():
            assert np.array_equal(pasted, rows[:, :, None] & cols[:, None, :])   # one rectangle...
            assert len({p.tobytes() for p in pasted if p.any()}) == 1           # ...the same in every image
        box = pasted.any(axis=0) if pasted.any() else np.zeros((h, w), bool)
        area = box.sum() if pasted.any() else (1 - np.diag(t)).max() * h * w
        kept = np.float32(1 - area / (h * w))
        for i in range(n):
            j = int(source[i][box][0]) if box.any() else i
            if j != i:
                np.testing.assert_allclose(t[i, i], kept, rtol=1e-6)
                np.testing.assert_allclose(t[i, j], 1 - kept, rtol=1e-5, atol=1e-6)
        areas.append(area / (h * w))
    # unclipped, the box covers 1 - lam of the image (E = 0.5 for alpha 1); clipping and int() shrink it
    assert 0.15 < np.mean(areas) < 0.5


# ---- on a GPU (pytest -m gpu): not yet run ---------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_gpu_batch_with_host_draws_equals_cpu_bitwise(name):
    """A NumPy Generator with a CuPy batch: the host's draws, copied -> the CPU's results."""
    aug = build_augmentation([name], 10, 12)
    data = np.random.default_rng(7)
    x, y = data.random((9, 3, 12, 12)).astype(np.float32), data.integers(0, 10, 9)
    want_x, want_y = aug(x, y, np.random.default_rng(1))
    got_x, got_y = aug(backend.to_gpu(x), backend.to_gpu(y), np.random.default_rng(1))
    assert backend.is_gpu_array(got_x)
    np.testing.assert_array_equal(backend.to_cpu(got_x), want_x)
    np.testing.assert_array_equal(backend.to_cpu(got_y), want_y)
