"""gpu_check without a usable GPU: a clear message, exit status 2, nothing run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpucnn import backend, gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is usable here")
def test_gpu_check_refuses_without_gpu(tmp_path, capsys):
    rc = gpu_check.main(["--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no usable GPU" in err and backend.gpu_unavailable_reason() in err
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert saved["steps"] == [] and "no usable GPU" in saved["error"]
    assert saved["environment"]["numpy"]


def test_gpu_check_command_line_without_gpu(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this runs the no-GPU path anywhere
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "gpucnn.gpu_check", "--out", str(tmp_path),
                           "--data-dir", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "no usable GPU" in proc.stderr


def test_sanitizer_driver_refuses_without_gpu(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "gpucnn.sanitizer_driver"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no usable GPU" in proc.stderr


def test_steps_cover_tests_sanitizers_and_bench(tmp_path):
    names = [name for name, *_ in gpu_check.steps(tmp_path, tmp_path)]
    assert names == ["pytest -m gpu", "sanitizer memcheck", "sanitizer racecheck", "bench --suite full"]
