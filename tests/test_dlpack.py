"""DLPack: gpucnn.asarray and the functional ops and modules take PyTorch tensors
(any __dlpack__ object) without a copy, and torch.from_dlpack takes the results
back without a copy. CPU tests use PyTorch CPU tensors; the GPU ones CuPy and
PyTorch CUDA tensors."""
import numpy as np
import pytest

import gpucnn
from gpucnn import functional as F
from gpucnn import models, nn
from gpucnn.nn.module import no_grad

torch = pytest.importorskip("torch")


def _shares(array, tensor):
    return array.__array_interface__["data"][0] == tensor.data_ptr()


def test_asarray_views_a_torch_tensor_both_ways():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = gpucnn.asarray(t)
    assert isinstance(a, np.ndarray) and a.shape == (3, 4) and a.dtype == np.float32 and _shares(a, t)
    t[1, 2] = -7.0          # torch -> numpy
    assert a[1, 2] == -7.0
    a[0, 0] = 42.0          # numpy -> torch
    assert t[0, 0].item() == 42.0


def test_asarray_passes_arrays_through_and_converts_the_rest():
    a = np.ones((2, 2), np.float32)
    assert gpucnn.asarray(a) is a
    np.testing.assert_array_equal(gpucnn.asarray([[1, 2]]), np.array([[1, 2]]))
    strided = torch.arange(24, dtype=torch.float64).reshape(4, 6)[:, ::2].T  # a non-contiguous view
    view = gpucnn.asarray(strided)
    assert _shares(view, strided) and not view.flags.c_contiguous
    np.testing.assert_array_equal(view, strided.numpy())


def test_asarray_refuses_memory_it_cannot_reach():
    class OnOtherDevice:
        def __dlpack__(self, **kwargs):
            raise AssertionError("not reached")

        def __dlpack_device__(self):
            return (4, 0)  # OpenCL

    with pytest.raises(TypeError, match="DLPack device type 4"):
        gpucnn.asarray(OnOtherDevice())


def test_functional_ops_take_torch_tensors_and_results_go_back_without_copy(rng):
    x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=(2, 1), padding=1)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, F.conv2d(x, w, b, stride=(2, 1), padding=1))
    back = torch.from_dlpack(y)
    assert _shares(y, back)
    back[0, 0, 0, 0] = 123.0
    assert y[0, 0, 0, 0] == 123.0
    # the backward ops and the pools
    dy = rng.normal(size=y.shape).astype(np.float32)
    np.testing.assert_array_equal(F.conv2d_backward_data(torch.from_numpy(dy), torch.from_numpy(w), x.shape, (2, 1), 1),
                                  F.conv2d_backward_data(dy, w, x.shape, (2, 1), 1))
    np.testing.assert_array_equal(F.conv2d_backward_filter(torch.from_numpy(dy), torch.from_numpy(x), w.shape, (2, 1), 1),
                                  F.conv2d_backward_filter(dy, x, w.shape, (2, 1), 1))
    ym, am = F.max_pool2d(torch.from_numpy(x), 2)
    ym_np, am_np = F.max_pool2d(x, 2)
    np.testing.assert_array_equal(ym, ym_np)
    np.testing.assert_array_equal(am, am_np)
    np.testing.assert_array_equal(F.max_pool2d_backward(torch.from_numpy(ym), torch.from_numpy(am), x.shape),
                                  F.max_pool2d_backward(ym_np, am_np, x.shape))
    np.testing.assert_array_equal(F.avg_pool1d(torch.from_numpy(x[:, :, 0]), 3, 1, 1), F.avg_pool1d(x[:, :, 0], 3, 1, 1))
    np.testing.assert_array_equal(F.avg_pool2d_backward(torch.from_numpy(ym), x.shape, 2),
                                  F.avg_pool2d_backward(ym_np, x.shape, 2))


def test_a_non_contiguous_torch_input_is_read_in_place(rng):
    base = torch.from_numpy(rng.normal(size=(2, 6, 5, 3)).astype(np.float32))
    x = base.permute(0, 3, 1, 2)  # (2, 3, 6, 5), not contiguous
    w = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(F.conv2d(x, w), F.conv2d(x.contiguous().numpy(), w), rtol=1e-6, atol=1e-6)


def test_modules_take_torch_tensors(rng):
    model = models.build("lenet_bn", 1, 10, 8).eval()
    x = rng.normal(size=(5, 1, 8, 8)).astype(np.float32)
    with no_grad():
        expected = model(x)
        got = model(torch.from_numpy(x))
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, expected)
    # a training step fed with a tensor: forward and backward as with the array
    layer = nn.Linear(8, 3)
    y = layer(torch.from_numpy(x.reshape(5, 64)[:, :8].copy()))
    layer.backward(np.ones_like(y))
    assert layer.weight.grad.shape == (3, 8)


@pytest.mark.gpu
def test_cupy_arrays_pass_through_and_torch_cuda_tensors_become_cupy_views(rng):
    import cupy
    a = cupy.ones((2, 3), cupy.float32)
    assert gpucnn.asarray(a) is a
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    t = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    v = gpucnn.asarray(t)
    assert isinstance(v, cupy.ndarray) and v.data.ptr == t.data_ptr()
    t[0, 0] = 5.0
    assert float(v[0, 0]) == 5.0
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    y = F.conv2d(torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda(), padding=1)
    assert isinstance(y, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(y), F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    back = torch.from_dlpack(y)
    assert back.is_cuda and back.data_ptr() == y.data.ptr
