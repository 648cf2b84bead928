"""backend.py (device choice, array movement) and kernel_loader.py (sources, casts)."""
import numpy as np
import pytest

from gpucnn import backend, kernel_loader


def test_numpy_is_default_module():
    a = np.ones(3, np.float32)
    assert backend.get_array_module(a) is np
    assert backend.get_array_module() is np
    assert backend.to_cpu(a) is not None and backend.to_cpu(a).dtype == np.float32


@pytest.mark.parametrize("bad", ["tpu", "cuda", "GPU0"])
def test_resolve_device_rejects_unknown(bad):
    with pytest.raises(ValueError, match="device must be one of"):
        backend.resolve_device(bad)


def test_resolve_device_cpu_and_auto(monkeypatch):
    assert backend.resolve_device("cpu") == "cpu"
    monkeypatch.setenv("GPUCNN_DEVICE", "cpu")
    assert backend.resolve_device() == "cpu"
    monkeypatch.setenv("GPUCNN_DEVICE", "auto")
    assert backend.resolve_device() == ("gpu" if backend.gpu_available() else "cpu")


def test_gpu_request_without_gpu_says_why(monkeypatch):
    if backend.gpu_available():
        pytest.skip("a GPU is usable here")
    monkeypatch.setenv("GPUCNN_DEVICE", "gpu")
    with pytest.raises(RuntimeError, match="needs a GPU: .+"):
        backend.resolve_device()
    with pytest.raises(RuntimeError, match="needs a GPU"):
        backend.to_gpu(np.zeros(2))
    assert backend.gpu_unavailable_reason()


def test_kernel_sources_found_and_headers_inlined():
    files = kernel_loader.kernel_files()
    assert files, "no kernels/*.cu found"
    for f in files:
        src = kernel_loader.read_source(f.name)
        assert '#include "' not in src, f"{f.name}: a local include was not inlined"


def test_read_source_missing_file_names_it():
    with pytest.raises(FileNotFoundError, match="no_such_kernel.cu"):
        kernel_loader.read_source("no_such_kernel.cu")


def test_read_source_inlines_each_header_once(tmp_path, monkeypatch):
    (tmp_path / "a.cuh").write_text('#include "b.cuh"\nint a;\n')
    (tmp_path / "b.cuh").write_text("int b;\n")
    (tmp_path / "k.cu").write_text('#include "a.cuh"\n#include "b.cuh"\nint k;\n')
    monkeypatch.setenv("GPUCNN_KERNEL_DIR", str(tmp_path))
    src = kernel_loader.read_source("k.cu")
    assert src.count("int b;") == 1 and "int a;" in src and "int k;" in src


def test_cast_args_is_explicit():
    args = kernel_loader.cast_args("ilfd", (3, 2**40, 1.5, 2.5))
    assert [type(a) for a in args] == [np.int32, np.int64, np.float32, np.float64]
    with pytest.raises(OverflowError):
        kernel_loader.cast_args("i", (2**31,))
    with pytest.raises(TypeError, match="takes 2 args"):
        kernel_loader.cast_args("ii", (1,))
    with pytest.raises(TypeError, match="CuPy array"):
        kernel_loader.cast_args("p", (np.zeros(2),))


def test_grid_limit():
    assert kernel_loader.grid_1d(1, 256) == (1,)
    assert kernel_loader.grid_1d(257, 256) == (2,)
    with pytest.raises(ValueError, match="grid limit"):
        kernel_loader.grid_1d(2**31 * 256 + 1, 256)


def test_one_device_and_dtype():
    a32, b32, a64 = np.zeros(2, np.float32), np.ones(3, np.float32), np.zeros(2)
    assert backend.one_device_and_dtype(a32, b32) == "cpu"
    assert backend.one_device_and_dtype(a32, a64) is None          # mixed dtypes
    assert backend.one_device_and_dtype(a32, np.float32(1.0)) is None  # a scalar is not an array
