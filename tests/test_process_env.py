"""gpucnn._process_env: OPENBLAS_THREAD_TIMEOUT set before NumPy loads OpenBLAS,
and BLAS_WORKERS_SLEEP true only when the setting reached the BLAS (then
cpu_parallel.matmul gives products the BLAS's own threads)."""
import os
import subprocess
import sys

import pytest

_PROBE = "import gpucnn.cpu_parallel as c, os; print(c.BLAS_WORKERS_SLEEP, os.environ['OPENBLAS_THREAD_TIMEOUT'])"


@pytest.mark.parametrize("first, user_value, expected", [
    ("", None, "True 4"),                # gpucnn first (the CLI): set before NumPy loads
    ("import numpy; ", None, "False 4"),  # NumPy first: OpenBLAS already read its setting
    ("import numpy; ", "4", "True 4"),    # ... unless the user set it before start-up
    ("", "28", "False 28"),               # the user's own (spinning) setting is kept
])
def test_the_blas_setting_and_whether_it_applies(first, user_value, expected):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if user_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = user_value
    out = subprocess.run([sys.executable, "-c", first + _PROBE], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.split("\n")[0].strip() == expected


def _run(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GPUCNN_MALLOC"))}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return out.stdout.strip()


_FAULTS = """
import resource, numpy as np, gpucnn._process_env as e
def step():   # arrays of a few sizes, 1-20 MiB, allocated, touched and freed each step
    arrays = [np.empty(m << 20, np.uint8) for m in (20, 1, 8, 3, 12)]
    for a in arrays:
        a[::4096] = 1
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(e.MALLOC_TUNED, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_arrays_are_reused_without_page_faults():
    tuned, faults = _run(_FAULTS).split()
    if tuned == "False":
        pytest.skip("not glibc")
    assert int(faults) < 200                  # 20 steps x 11,000 pages touched: reused, not faulted in
    assert _run(_FAULTS, GPUCNN_MALLOC_TUNING="0").split()[0] == "False"   # the opt-out
    assert _run(_FAULTS, MALLOC_TRIM_THRESHOLD_="131072").split()[0] == "False"   # the user's setting stands
