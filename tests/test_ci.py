"""The CI script's own checks (.ci/run): a JUnit report counts as a pass only
with tests run and none failed (pytest's exit 5, nothing collected, is no pass)."""
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_junit", ROOT / ".ci" / "check_junit.py")
check_junit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_junit)


def report(tmp_path, tests, failures=0, errors=0, skipped=0):
    path = tmp_path / "junit.xml"
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" '
                    f'failures="{failures}" errors="{errors}" skipped="{skipped}"></testsuite></testsuites>')
    return path


@pytest.mark.parametrize("counts, ok", [
    (dict(tests=700, skipped=300), True),
    (dict(tests=0), False),                 # pytest exit 5: nothing collected
    (dict(tests=10, skipped=10), False),    # everything skipped
    (dict(tests=10, failures=1), False),
    (dict(tests=10, errors=1), False),
])
def test_junit_check(tmp_path, counts, ok, capsys):
    assert (check_junit.main(report(tmp_path, **counts), "x") == 0) == ok


def test_ci_script_is_valid_bash_and_clones_before_installing():
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], check=True)
    text = (ROOT / ".ci" / "run").read_text()
    assert text.index("git clone") < text.index("run_suite fresh") < text.index('pip install -q "torch')
    assert "include-system-site-packages = false" in text and "check_junit.py" in text
