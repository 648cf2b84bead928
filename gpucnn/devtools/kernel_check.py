"""Compile every kernels/*.cu with nvcc and report each kernel's resources.

    python -m gpucnn.devtools.kernel_check --arch sm_90 [--arch sm_80]   (make kernels)

For each architecture and each .cu file (twice, -DSCALAR=float and
-DSCALAR=double, when the file uses the SCALAR switch of common.cuh) this runs
    nvcc -arch=<arch> -cubin -I kernels --std=c++17 -lineinfo
         -Xptxas -v,-warn-spills,-warn-lmem-usage
and parses ptxas's report into one row per kernel: registers, static shared
memory, stack frame, spill stores/loads. It exits non-zero when any compile
fails, prints a warning (nvcc or ptxas), or any kernel spills; a system
#include (which NVRTC, the run-time compiler, cannot resolve) is a problem too.
`report()` returns the rows as a list of dicts. Needs nvcc, not a GPU.

--sass adds, per kernel, the SASS instruction mix of its main loop
(gpucnn.devtools.sass_check: cuobjdump --dump-sass on the same cubins).
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import kernel_loader
from . import sass_check

NVCC_FLAGS = ("-cubin", "--std=c++17", "-lineinfo", "-Xptxas", "-v,-warn-spills,-warn-lmem-usage")
SCALARS = ("float", "double")
# nvcc flags of each build; "half" is the float16 build of the storage_t
# kernels (kernels/common.cuh: float arithmetic, float16 arrays).
SCALAR_FLAGS = {"float": ("-DSCALAR=float",), "double": ("-DSCALAR=double",),
                "half": ("-DSCALAR=float", "-DSTORAGE_HALF")}

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_WARNING = re.compile(r"\bwarning\b", re.IGNORECASE)
_SYSTEM_INCLUDE = re.compile(r"^\s*#\s*include\s*<", re.MULTILINE)


def find_nvcc():
    """Path of nvcc (PATH, then $CUDA_HOME/bin, /usr/local/cuda/bin) or None."""
    found = shutil.which("nvcc")
    if found:
        return found
    import os
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def scalar_variants(path):
    """('float', 'double') when the file is written over scalar_t (honours
    -DSCALAR), plus 'half' when it has storage_t kernels, else (None,): a float-only file such as conv2d_tc.cu, which
    includes common.cuh but never names scalar_t, is compiled once."""
    own = re.sub(r"//[^\n]*", "", path.read_text())
    if not re.search(r"\b(?:scalar_t|SCALAR)\b", own):
        return (None,)
    return SCALARS + (("half",) if re.search(r"\bstorage_t\b", own) else ())


def parse_ptxas(text):
    """Rows {kernel, registers, smem, stack, spill_stores, spill_loads} from ptxas -v output."""
    rows, current = [], None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"kernel": m.group(1), "registers": None, "smem": 0,
                       "stack": None, "spill_stores": None, "spill_loads": None}
            rows.append(current)
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            current["smem"] = int(s.group(1)) if s else 0
    return rows


def compile_unit(path, arch, scalar, nvcc, cuobjdump=None):
    """Compile one (file, arch, scalar); returns (kernel rows, problems).
    With cuobjdump, each row also gets its main loop's SASS mix."""
    unit = f"{path.name} {arch}" + (f" SCALAR={scalar}" if scalar else "")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, f"-arch={arch}", *NVCC_FLAGS, "-I", str(path.parent),
               "-o", str(Path(tmp) / "out.cubin"), str(path)]
        if scalar:
            cmd[1:1] = SCALAR_FLAGS[scalar]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sass = {}
        if cuobjdump and proc.returncode == 0:
            sass = sass_check.parse_sass(sass_check.dump_sass(Path(tmp) / "out.cubin", cuobjdump))
    output = proc.stdout + proc.stderr
    problems = [f"{unit}: {line.strip()}" for line in output.splitlines() if _WARNING.search(line)]
    if proc.returncode != 0:
        problems.append(f"{unit}: nvcc failed (exit {proc.returncode}):\n{output.strip()}")
    rows = parse_ptxas(output)
    if proc.returncode == 0 and not rows:
        problems.append(f"{unit}: no kernel was compiled (a template without an explicit "
                        "instantiation is never checked)")
    for row in rows:
        row.update(file=path.name, arch=arch, scalar=scalar or "-")
        if cuobjdump:
            row.update(sass_check.loop_mix(sass.get(row["kernel"], [])))
        if row["spill_stores"] or row["spill_loads"]:
            problems.append(f"{unit}: {row['kernel']} spills {row['spill_stores']} bytes stored, "
                            f"{row['spill_loads']} bytes loaded")
    return rows, problems


def check(archs=("sm_90",), files=None, sass=False):
    """(rows, problems) for every kernels/*.cu (or `files`) and architecture."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("kernel_check: nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin")
    cuobjdump = sass_check.find_cuobjdump() if sass else None
    if sass and cuobjdump is None:
        raise FileNotFoundError("kernel_check --sass: cuobjdump not found (PATH, or pip install "
                                "nvidia-cuda-cuobjdump)")
    paths = [Path(f) for f in files] if files else kernel_loader.kernel_files()
    rows, problems = [], []
    for path in paths:
        if _SYSTEM_INCLUDE.search(kernel_loader.read_source(path.name)):
            problems.append(f"{path.name}: #include <...> of a system header (NVRTC has none)")
        for arch in archs:
            for scalar in scalar_variants(path):
                r, p = compile_unit(path, arch, scalar, nvcc, cuobjdump)
                rows += r
                problems += p
    return rows, problems


def report(archs=("sm_90",), files=None):
    """The parsed resource report: one dict per (arch, file, scalar, kernel)."""
    return check(archs, files)[0]


def format_table(rows):
    head = ("arch", "file", "scalar", "kernel", "regs", "smem", "stack", "spill st", "spill ld")
    body = [(r["arch"], r["file"], r["scalar"], r["kernel"], r["registers"], r["smem"], r["stack"],
             r["spill_stores"], r["spill_loads"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [head, *body])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpucnn.devtools.kernel_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="e.g. sm_90 (repeatable; default sm_90)")
    parser.add_argument("--sass", action="store_true",
                        help="also report each kernel's main-loop SASS instruction mix (cuobjdump)")
    parser.add_argument("files", nargs="*", help="kernel sources (default: every kernels/*.cu)")
    args = parser.parse_args(argv)
    try:
        rows, problems = check(tuple(args.arch or ["sm_90"]), args.files or None, sass=args.sass)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(sass_check.format_table(rows) if args.sass else format_table(rows))
    for p in problems:
        print("PROBLEM:", p)
    print(f"{len(rows)} kernels, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
