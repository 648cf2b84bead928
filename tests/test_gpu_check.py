"""gpu_check without a usable GPU: a clear message, exit status 2, nothing
run; and its step runner (exit status, time limit) on plain commands."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpucnn import backend
from gpucnn.devtools import gpu_check

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
    proc = subprocess.run([sys.executable, "-m", "gpucnn.devtools.gpu_check", "--out", str(tmp_path),
                           "--data-dir", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "no usable GPU" in proc.stderr


def test_sanitizer_driver_refuses_without_gpu(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "gpucnn.devtools.sanitizer_driver"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no usable GPU" in proc.stderr


def test_steps_cover_tests_sanitizers_and_bench(tmp_path):
    names = [name for name, *_ in gpu_check.steps(tmp_path, tmp_path)]
    assert names == ["pytest -m gpu", "sanitizer memcheck", "sanitizer racecheck", "bench --suite full"]


def test_run_step_records_exit_status_and_kills_a_step_past_its_time_limit(tmp_path):
    ok = gpu_check.run_step("ok", [sys.executable, "-c", "print('hi')"], tmp_path / "ok.log")
    assert ok["ok"] and ok["returncode"] == 0 and not ok["timed_out"]
    assert "hi" in (tmp_path / "ok.log").read_text()
    bad = gpu_check.run_step("bad", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad.log")
    assert not bad["ok"] and bad["returncode"] == 3
    # a child that spawns a grandchild: both must be gone after the time limit
    marker = tmp_path / "grandchild.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
              f"'import time; time.sleep(60)']); open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    slow = gpu_check.run_step("slow", [sys.executable, "-c", script], tmp_path / "slow.log", timeout=3)
    assert slow["timed_out"] and not slow["ok"] and slow["seconds"] < 30
    assert "killed after 3 s" in (tmp_path / "slow.log").read_text()
    pid = int(marker.read_text())
    for _ in range(50):  # the kill is asynchronous; the grandchild must disappear
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
            break  # a zombie waiting for its reaper: already dead
        time.sleep(0.1)
    else:
        raise AssertionError(f"grandchild {pid} survived the time limit")
