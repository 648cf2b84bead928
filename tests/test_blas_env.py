"""gpucnn._blas_env: OPENBLAS_THREAD_TIMEOUT set before NumPy loads OpenBLAS,
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
