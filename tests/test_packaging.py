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
