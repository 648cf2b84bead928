"""A non-editable install must carry kernels/*.cu as package data, and
`import gpucnn` must work without a usable GPU."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_kernel_sources(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("gpucnn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.name for p in (ROOT / "kernels").glob("*.cu*")}
    assert sources
    for name in sources:
        assert f"gpucnn/_kernels/{name}" in names, f"{name} missing from {wheel.name}"


def test_import_without_gpu_in_fresh_process(tmp_path):
    code = ("import gpucnn, numpy as np; from gpucnn import functional as F; "
            "print(gpucnn.gpu_available()); "
            "y, a = F.max_pool2d(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4), 2); "
            "print(y.ravel().tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"GPUCNN_DEVICE": "cpu", "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.splitlines()[-1] == "[5.0, 7.0, 13.0, 15.0]"


def test_import_and_train_step_without_cupy(tmp_path):
    """sys.modules['cupy'] = None makes `import cupy` fail, as without CuPy installed."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import numpy as np, gpucnn\n"
            "from gpucnn import backend, nn, optim\n"
            "assert backend.cupy is None and not gpucnn.gpu_available()\n"
            "assert 'CuPy is not importable' in backend.gpu_unavailable_reason()\n"
            "m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))\n"
            "loss, g = nn.SoftmaxCrossEntropy()(m(np.ones((2, 1, 6, 6), np.float32)), np.array([0, 2]))\n"
            "m.backward(g); optim.SGD(m.parameters(), lr=0.1).step()\n"
            "try:\n"
            "    backend.resolve_device('gpu')\n"
            "except RuntimeError as e:\n"
            "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "refused: device 'gpu' needs a GPU: CuPy is not importable" in out.stdout
