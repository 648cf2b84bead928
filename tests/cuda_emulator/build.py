"""Builds the CPU emulator of gpucnn's CUDA kernels: one executable per dtype
(-DSCALAR=float / double) holding every extern "C" kernel of kernels/*.cu,
compiled by g++ with AddressSanitizer and UndefinedBehaviorSanitizer.

CPU emulation of the CUDA kernels (index math, bounds, barriers); not a
substitute for a GPU run, compute-sanitizer or NVRTC.

The kernels are compiled from the text kernel_loader.read_source gives NVRTC
(local #includes inlined), after cuda_emu.h has defined the CUDA built-ins.
Their signatures are read from the preprocessed source, so that the
generated dispatcher (emu_kernels.inc) and the Python side (device.py) agree
with the .cu files; a parameter type not listed in TYPES fails the build
loudly. The build lands in a cache directory keyed by a hash of everything
it depends on (~/.cache/gpucnn-emu/<hash>, or $GPUCNN_EMU_CACHE/<hash>), so
only the first test session after a kernel change pays for it.
"""
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from gpucnn import kernel_loader

HERE = Path(__file__).resolve().parent
CXXFLAGS = ("-std=c++17", "-O1", "-g", "-pthread", "-fno-omit-frame-pointer",
            "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
SCALARS = {"float32": "float", "float64": "double", "float16": "float"}
# float16: storage_t kernels (float16 arrays, float arithmetic: common.cuh's
# STORAGE_HALF); not in the default build, a variant build asks for it.
EXTRA_FLAGS = {"float16": ("-DSTORAGE_HALF",)}
DEFAULT_DTYPES = ("float32", "float64")
# C parameter types the emulator understands, with their NumPy dtype
# (scalar_t: the build's dtype). Pointers may point to any of them.
TYPES = {"int": "int32", "long long": "int64", "idx_t": "int64",
         "float": "float32", "double": "float64", "scalar_t": "scalar", "storage_t": "storage"}


def find_cxx():
    """The C++ compiler ($CXX, default g++), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def sanitizers_work(cxx):
    """Whether cxx links a program with ASan + UBSan (libasan may be missing)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.cpp")
        src.write_text("int main() { return 0; }\n")
        return subprocess.run([cxx, *CXXFLAGS, str(src), "-o", str(Path(tmp, "probe"))],
                              capture_output=True).returncode == 0


# ---------------------------------------------------------------------------
# Kernel discovery

def parse_param(kernel, text):
    """'const scalar_t* __restrict__ x' -> {name, type, pointer, const, restrict}."""
    tokens = text.replace("__restrict__", " ").replace("*", " * ").split()
    if len(tokens) < 2 or tokens.count("*") > 1 or not re.fullmatch(r"\w+", tokens[-1]):
        raise ValueError(f"{kernel}: parameter {text!r} is not understood by the CUDA emulator")
    star = tokens.index("*") if "*" in tokens else len(tokens) - 1
    base = " ".join(t for t in tokens[:star] if t != "const")
    if base not in TYPES or any(t not in ("*", "const") for t in tokens[star:-1]):
        raise ValueError(f"{kernel}: parameter {text!r} has a type the CUDA emulator does not "
                         f"understand (known: {sorted(TYPES)})")
    return {"name": tokens[-1], "type": base, "pointer": "*" in tokens,
            "const": "const" in tokens[:star], "restrict": "__restrict__" in text}


def _functions(text):
    """{name: (header, parameter text, body)} of every function defined at file scope."""
    found, depth, start, open_at = {}, 0, 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                open_at = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                header = text[start:open_at].strip()
                if header.endswith(")"):   # a function, not a struct/namespace
                    name, params = _signature(header)
                    found[name] = (header, params, text[open_at:i + 1])
                start = i + 1
        elif ch == ";" and depth == 0:
            start = i + 1
    if depth != 0:
        raise ValueError("unbalanced braces in the preprocessed kernel source")
    return found


def _signature(header):
    """(name, parameter text) of a function header: the last parenthesised
    group is the parameter list and the identifier before it the name."""
    level = 0
    for i in range(len(header) - 1, -1, -1):
        level += {")": 1, "(": -1}.get(header[i], 0)
        if level == 0:
            m = re.search(r"(\w+)\s*$", header[:i])
            if not m:
                raise ValueError(f"cannot find the function name in {header!r}")
            return m.group(1), header[i + 1:-1]
    raise ValueError(f"unbalanced parentheses in {header!r}")


# Calls that need the block's threads as OS threads: the block barrier and
# the warp collectives (cuda_emu.h), including kernels/mma.cuh's wrappers.
_THREAD_SYNC = re.compile(r"\b(?:__syncthreads|__syncwarp|__shfl\w*_sync|emu_warp_\w+)\b")


def _reaches_barrier(name, functions, seen=()):
    """Whether a function or anything it names (over-approximated: every
    identifier that is a function of the file) contains __syncthreads or a
    warp collective."""
    body = functions[name][2]
    if _THREAD_SYNC.search(body):
        return True
    named = set(re.findall(r"\b\w+\b", body)) & functions.keys()
    return any(_reaches_barrier(f, functions, seen + (name,)) for f in named - set(seen) - {name})


def discover(filename, source, cxx):
    """The extern "C" __global__ kernels of one source text, as dicts
    {name, file, params, barrier, max_threads}."""
    pre = subprocess.run([cxx, "-E", "-P", "-x", "c++", "-DSCALAR=float", "-"], input=source,
                         capture_output=True, text=True)
    if pre.returncode:
        raise RuntimeError(f"preprocessing {filename} failed:\n{pre.stderr}")
    functions = _functions(pre.stdout)
    kernels = []
    for name, (header, params, _) in functions.items():
        if not re.search(r"\b__global__\b", header):
            continue
        if not header.startswith('extern "C"'):
            raise ValueError(f"{filename}: kernel {name} is not extern \"C\"; the emulator "
                             "(like the launchers) only knows plain kernel names")
        bound = re.search(r"__launch_bounds__\s*\(\s*(\d+)", header)
        kernels.append({
            "name": name, "file": filename,
            "params": [parse_param(name, p) for p in params.split(",") if p.strip()],
            "barrier": _reaches_barrier(name, functions),
            "max_threads": int(bound.group(1)) if bound else 1024,
        })
    if not kernels:
        raise ValueError(f"{filename}: no extern \"C\" __global__ kernel found")
    return kernels


# ---------------------------------------------------------------------------
# Code generation and compilation

def _dispatcher(files, kernels):
    """emu_kernels.inc: the kernel sources and the table of launch functions."""
    lines = ["// Generated by tests/cuda_emulator/build.py; do not edit."]
    lines += [f'#include "{f}"' for f in files]
    lines.append("static const EmuKernel KERNELS[] = {")
    for k in kernels:
        args = []
        for i, p in enumerate(k["params"]):
            if p["pointer"]:
                args.append(f"a.ptr<{'const ' if p['const'] else ''}{p['type']}>({i})")
            else:
                args.append(f"a.value<{p['type']}>({i})")
        barrier = "true" if k["barrier"] else "false"
        lines.append(f'    {{"{k["name"]}", [](Args& a) {{ a.expect_count({len(args)}); '
                     f'a.launch({barrier}, {k["name"]}, {", ".join(args)}); }}}},')
    lines.append("};")
    return "\n".join(lines) + "\n"


def _key(cxx, sources, extra=()):
    h = hashlib.sha256()
    h.update(repr(tuple(extra)).encode())
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    own = [(HERE / f).read_text() for f in ("cuda_emu.h", "emu_main.cpp", "build.py")]
    for part in [version, " ".join(CXXFLAGS)] + own:
        h.update(part.encode())
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name].encode())
    return h.hexdigest()[:20]


def _compile(cxx, workdir, final, dtype):
    """emu_<dtype> in workdir; debug paths name `final`, where workdir will be."""
    exe = workdir / f"emu_{dtype}"
    cmd = [cxx, *CXXFLAGS, f"-DSCALAR={SCALARS[dtype]}", *EXTRA_FLAGS.get(dtype, ()), f"-fdebug-prefix-map={workdir}={final}",
           "-I", str(HERE), "-I", str(workdir), str(HERE / "emu_main.cpp"), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"building the CUDA emulator failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")
    return exe


def cache_root():
    env = os.environ.get("GPUCNN_EMU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gpucnn-emu"


def build(root=None, sources=None, dtypes=DEFAULT_DTYPES):
    """The emulator build for the current kernel sources (built on first use):
    a directory with emu_<dtype> for each dtype and kernels.json. `sources`
    ({file name: text}, default: every kernels/*.cu as NVRTC gets it) makes
    a variant build (the tests' planted bugs), cached under its own key."""
    cxx = find_cxx()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found")
    if sources is None:
        sources = {p.name: kernel_loader.read_source(p.name) for p in kernel_loader.kernel_files()}
    dtypes = tuple(dtypes)
    root = Path(root) if root else cache_root()
    out = root / _key(cxx, sources, dtypes)
    if (out / "kernels.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix="building-"))
    try:
        kernels = [k for name, text in sorted(sources.items()) for k in discover(name, text, cxx)]
        names = [k["name"] for k in kernels]
        if len(set(names)) != len(names):
            raise ValueError(f"kernel names defined twice across kernels/*.cu: {names}")
        for name, text in sources.items():
            (work / name).write_text(text)
        (work / "emu_kernels.inc").write_text(_dispatcher(sorted(sources), kernels))
        with concurrent.futures.ThreadPoolExecutor(len(dtypes)) as pool:
            list(pool.map(lambda dt: _compile(cxx, work, out, dt), dtypes))
        (work / "kernels.json").write_text(json.dumps(kernels, indent=1))
        try:
            os.replace(work, out)
        except OSError:   # a concurrent session finished the same build first
            shutil.rmtree(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def half_build(root=None):
    """The float16 variant build (emu_float16) of the kernel files that have
    storage_t kernels (their own text names storage_t), built on first use."""
    sources = {p.name: kernel_loader.read_source(p.name) for p in kernel_loader.kernel_files()
               if re.search(r"\bstorage_t\b", re.sub(r"//[^\n]*", "", p.read_text()))}
    return build(root, sources, dtypes=("float16",))
