"""Each script in examples/ runs to the end with tiny settings (as a subprocess)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def test_train_fashion_mnist():
    pytest.importorskip("sklearn")
    r = run_example("train_fashion_mnist.py", "--dataset", "digits", "--subset", "600", "--epochs", "1",
                    "--model", "lenet5")
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "epoch 1" in r.stdout


def test_compare_optimizers(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "opt.png"
    r = run_example("compare_optimizers.py", "--dataset", "digits", "--subset", "200", "--epochs", "1",
                    "--out", str(out))
    assert r.returncode == 0, r.stderr
    for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam"):
        assert name in r.stdout
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_gradcheck_custom_layer():
    r = run_example("gradcheck_custom_layer.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout
    broken = run_example("gradcheck_custom_layer.py", "--broken")
    assert broken.returncode == 1 and "FAIL" in broken.stdout


def test_compare_gpu_kernel():
    r = run_example("compare_gpu_kernel.py", "--batch", "2", "--channels", "3", "--filters", "4",
                    "--size", "7", "--stride", "2", "--padding", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cpu : output (2, 4, 4, 4)" in r.stdout and "OK" in r.stdout
    assert "gpu : skipped" in r.stdout or "gpu : output" in r.stdout


@pytest.mark.parametrize("name, args", [
    ("conv1d_signals.py", ("--samples", "150", "--epochs", "1")),
    ("conv3d_volumes.py", ("--samples", "40", "--epochs", "1", "--size", "8")),
])
def test_nd_examples(name, args):
    r = run_example(name, *args, "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "epoch 1:" in r.stdout and "test accuracy" in r.stdout
