"""Everything that proves the GPU kernels, in one command
(docs/gpu-verification.md says what counts as verified):

    python -m gpucnn.devtools.gpu_check --out DIR --data-dir PATH      (make gpu-check)

1. records the GPU name, driver, CUDA, CuPy and NumPy versions and the git commit;
2. runs the GPU tests (pytest -m gpu, outputs NaN-poisoned) -> DIR/pytest_gpu.log;
3. runs gpucnn.devtools.sanitizer_driver (every kernel version on small shapes) under
   compute-sanitizer memcheck and racecheck -> DIR/memcheck.log, racecheck.log;
4. runs `python -m gpucnn bench --suite full --precision highest high medium
   --json DIR/bench.json` -> DIR/bench.log (every conv precision, docs/precision.md);
5. writes DIR/gpu_check.json (environment + each step's command, exit status,
   seconds and log) and prints a short table last.
Exit status: 0 when every step passed, 1 when one failed, 2 when no GPU is
usable (nothing is run then; the reason is printed and saved). --data-dir
(Fashion-MNIST IDX files) reaches the tests as GPUCNN_DATA_DIR.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import backend
from . import kernel_hashes
from ..benchmark.env import git_info

ROOT = Path(__file__).resolve().parents[2]   # the repository (gpucnn/devtools/../..)
SANITIZER_TOOLS = ("memcheck", "racecheck")


def environment():
    """Versions and device facts (no GPU fields when none is usable)."""
    env = {"python": platform.python_version(), "numpy": np.__version__,
           "cupy": getattr(backend.cupy, "__version__", None), "git": git_info(),
           "gpu_usable": backend.gpu_available(), "gpu_unusable_reason": backend.gpu_unavailable_reason(),
           # what this check verifies, by content: `python -m gpucnn.devtools.kernel_hashes --verified-by` records it
           "source_sha256": {k: v[0] for k, v in kernel_hashes.current_sources(ROOT).items()}}
    env.update(backend.device_info())
    return env


def find_compute_sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "compute-sanitizer").is_file():
            return str(Path(root) / "bin" / "compute-sanitizer")
    return None


def run_step(name, cmd, log_path, env=None, timeout=None):
    """Run cmd with stdout+stderr into log_path; returns the step's record.
    A step still running after `timeout` seconds is killed with its whole
    process group (compute-sanitizer's target too) and fails."""
    start = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as exc:
            log.write(f"could not start: {exc}\n")
            rc = None
        else:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                log.write(f"\ngpu_check: killed after {timeout} s\n")
                rc, timed_out = None, True
    return {"step": name, "command": cmd, "returncode": rc, "ok": rc == 0, "timed_out": timed_out,
            "seconds": round(time.perf_counter() - start, 1), "log": str(log_path)}


def steps(out, data_dir, bench_suite="full"):
    """The (name, command, log, env) of every check, in order."""
    py = sys.executable
    env = dict(os.environ, GPUCNN_POISON="1", GPUCNN_DATA_DIR=str(data_dir))
    plan = [("pytest -m gpu", [py, "-m", "pytest", "-m", "gpu", "-v", "-rfEs"],
             out / "pytest_gpu.log", env)]
    sanitizer = find_compute_sanitizer()
    for tool in SANITIZER_TOOLS:
        cmd = ([sanitizer, "--tool", tool, "--error-exitcode", "99", py, "-m", "gpucnn.devtools.sanitizer_driver"]
               if sanitizer else ["compute-sanitizer"])  # missing: the step fails with "could not start"
        plan.append((f"sanitizer {tool}", cmd, out / f"{tool}.log", env))
    if bench_suite != "none":
        plan.append((f"bench --suite {bench_suite}", [py, "-m", "gpucnn", "bench", "--suite", bench_suite,
                                                      "--precision", "highest", "high", "medium",
                                                      "--json", str(out / "bench.json")], out / "bench.log", None))
    return plan


def format_table(env, results):
    lines = [f"GPU {env.get('gpu_name', '-')} | driver {env.get('driver_version', '-')} | "
             f"CUDA runtime {env.get('cuda_runtime_version', '-')} | CuPy {env['cupy']} | "
             f"NumPy {env['numpy']} | commit {env['git']['commit']}"
             f"{' (dirty)' if env['git']['dirty'] else ''}"]
    width = max(len(r["step"]) for r in results)
    for r in results:
        status = ("PASS" if r["ok"] else "FAIL (timed out)" if r.get("timed_out")
                  else f"FAIL (exit {r['returncode']})")
        lines.append(f"{r['step'].ljust(width)}  {status:<16} {r['seconds']:>7.1f}s  {r['log']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpucnn.devtools.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the logs, bench.json and gpu_check.json")
    parser.add_argument("--data-dir", required=True, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--bench-suite", default="full", help="benchmark suite (default: full; none: no benchmark)")
    parser.add_argument("--step-timeout", type=float, default=None, metavar="SECONDS",
                        help="kill a step that runs longer (it then fails)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    summary = {"environment": env, "data_dir": str(args.data_dir),
               "data_dir_exists": Path(args.data_dir).is_dir(), "steps": []}
    if not env["gpu_usable"]:
        msg = (f"gpu_check: no usable GPU ({env['gpu_unusable_reason']}); nothing was run. "
               "Run it on a machine with an NVIDIA GPU and CuPy (see the README's GPU status section).")
        summary["error"] = msg
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
        print(msg, file=sys.stderr)
        return 2
    if not summary["data_dir_exists"]:
        print(f"gpu_check: warning: --data-dir {args.data_dir} does not exist; "
              "tests that need Fashion-MNIST will skip or fail", file=sys.stderr)
    for name, cmd, log, step_env in steps(out, args.data_dir, args.bench_suite):
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        summary["steps"].append(run_step(name, cmd, log, step_env, args.step_timeout))
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    print(format_table(env, summary["steps"]))
    return 0 if all(r["ok"] for r in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
