"""A fake CUDA device for the tests: NumPy arrays pose as CuPy arrays and
every kernel launch runs in the CPU emulator (build.py).

CPU emulation of the CUDA kernels (index math, bounds, barriers); not a
substitute for a GPU run, compute-sanitizer or NVRTC.

`EmulatedDevice.install(monkeypatch)` patches gpucnn.backend (cupy,
is_gpu_array, get_array_module, to_gpu, to_cpu, gpu_available) and
kernel_loader.get_typed_kernel. kernel_loader.launch, cast_args and
alloc_output stay real, so the whole launcher path runs as on a GPU; only the
kernel object is replaced. It checks each launch against the kernel's C
signature (argument count, exact NumPy scalar types, array dtypes,
C-contiguity, no aliasing of a __restrict__ output), the grid and block
limits and __launch_bounds__, then runs the emulator.

Data crosses to the emulator through files, one process per launch: the
emulator runs with AddressSanitizer without LD_PRELOAD into Python, every
array is its own exact-size malloc (an access outside it is reported), and a
sanitizer abort fails one launch instead of the test process.
"""
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np

from gpucnn import backend, kernel_loader

from . import build
from .build import TYPES

SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
_TAGS = {np.int32: "i", np.int64: "l", np.float32: "f", np.float64: "d"}


class EmulatorError(RuntimeError):
    """A launch the emulator refused or that failed in it (sanitizer report included)."""


class DeviceArray(np.ndarray):
    """An array in the emulated device's memory: a NumPy array of its own type,
    so that the front tells it from a host array."""


def _device(a):
    return a.view(DeviceArray)


class FakeCupy:
    """The few CuPy functions that gpucnn's GPU path calls."""
    ndarray = DeviceArray
    __version__ = "emulated"

    @staticmethod
    def empty(shape, dtype=np.float32):
        """Uninitialised memory is NaN (the most negative value for integers):
        a kernel that leaves part of it unwritten then shows."""
        dtype = np.dtype(dtype)
        return FakeCupy.full(shape, np.nan if dtype.kind == "f" else np.iinfo(dtype).min, dtype)

    @staticmethod
    def full(shape, fill, dtype=np.float32):
        return _device(np.full(shape, fill, dtype=dtype))

    @staticmethod
    def ascontiguousarray(a):
        return _device(np.ascontiguousarray(a))

    @staticmethod
    def asarray(a):
        return a if isinstance(a, DeviceArray) else _device(np.array(a))

    @staticmethod
    def pad(a, pad_width, constant_values=0):
        """cupy.pad with a constant (the conv ops' zero extension for 'same'/transposed)."""
        return _device(np.pad(np.asarray(a).view(np.ndarray), pad_width, constant_values=constant_values))

    @staticmethod
    def asnumpy(a):
        return np.array(a).view(np.ndarray)


class EmulatedKernel:
    """Stands in for a cupy RawKernel: kernel(grid, block, args, shared_mem=0)."""

    def __init__(self, device, info, dtype):
        self.device, self.info, self.dtype = device, info, np.dtype(dtype)
        self.name = info["name"]

    def _fail(self, what):
        raise EmulatorError(f"{self.name}: {what}")

    def _check_launch(self, grid, block, shared_mem):
        if not (1 <= len(grid) <= 3 and 1 <= len(block) <= 3):
            self._fail(f"grid {grid} / block {block} must have 1 to 3 dimensions")
        grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
        if not (1 <= grid[0] <= kernel_loader.MAX_GRID_X and all(1 <= g <= 65535 for g in grid[1:])):
            self._fail(f"grid {grid} outside the CUDA limits")
        threads = int(np.prod(block))
        if min(block) < 1 or block[2] > 64 or max(block) > 1024 or threads > self.info["max_threads"]:
            self._fail(f"block {block} outside the CUDA limits or __launch_bounds__"
                       f"({self.info['max_threads']})")
        if shared_mem:
            self._fail("dynamic shared memory is not emulated (the kernels use static __shared__)")
        return grid, block

    def _encode(self, i, param, arg, workdir):
        """The emulator's text for one argument, after checking it against the parameter."""
        what = f"argument {i} ({param['name']})"
        ctype = param["type"]
        # scalar_t is float in the float16 build; storage_t is the array dtype
        want = {"scalar_t": np.float32 if self.dtype == np.float16 else self.dtype.type,
                "storage_t": self.dtype.type}.get(ctype) or np.dtype(TYPES[ctype]).type
        if param["pointer"]:
            if not isinstance(arg, DeviceArray):
                self._fail(f"{what} must be a device array, got {type(arg).__name__}")
            if arg.dtype != want or not arg.flags.c_contiguous:
                self._fail(f"{what}: {arg.dtype} array (C-contiguous: {arg.flags.c_contiguous}) "
                           f"for a {ctype}* parameter")
            path = workdir / f"arg{i}.bin"
            arg.tofile(path)
            return f"p:{path}:{arg.nbytes}"
        if type(arg) is not want:
            self._fail(f"{what} is {type(arg).__name__}, the kernel takes {ctype} "
                       f"({want.__name__}): check the launcher's signature string")
        return f"{_TAGS[want]}:{float(arg).hex() if want in (np.float32, np.float64) else int(arg)}"

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = self._check_launch(grid, block, shared_mem)
        params = self.info["params"]
        if len(args) != len(params):
            self._fail(f"{len(args)} arguments for {len(params)} parameters")
        workdir = self.device.workdir
        text = [self._encode(i, p, a, workdir) for i, (p, a) in enumerate(zip(params, args))]
        arrays = [(i, p, a) for i, (p, a) in enumerate(zip(params, args)) if p["pointer"]]
        for i, p, a in arrays:   # a __restrict__ output may share memory with no other argument
            if p["restrict"] and not p["const"] and \
                    any(j != i and np.may_share_memory(a, b) for j, _, b in arrays):
                self._fail(f"__restrict__ output {p['name']} overlaps another argument")
        env = {**os.environ, **SANITIZER_ENV}
        if self.device.misalign:
            env["EMU_MISALIGN"] = str(self.device.misalign)
        cmd = [str(self.device.executable(self.dtype)), self.name, *map(str, grid + block),
               "reverse" if self.device.reverse else "forward", *text]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            report = r.stderr if len(r.stderr) < 9000 else f"{r.stderr[:6000]}\n...\n{r.stderr[-2000:]}"
            self._fail(f"emulator exit {r.returncode}:\n{report}")
        for i, (p, a) in enumerate(zip(params, args)):
            if p["pointer"] and not p["const"]:
                a[...] = np.fromfile(workdir / f"arg{i}.bin", dtype=a.dtype).reshape(a.shape)
        self.device.launches[(self.name, self.dtype.name)] += 1


class EmulatedDevice:
    """The emulator build plus a scratch directory; `launches` counts
    (kernel name, dtype) pairs. reverse=True runs blocks (and the threads of
    barrier-free blocks) in reverse order. misalign=K starts every device
    buffer K bytes past a 16-byte boundary (emu_main.cpp's EMU_MISALIGN), as
    a CuPy view at an element offset would be; 0 keeps malloc's alignment.
    extra_builds: variant build directories searched for an emu_<dtype> the
    main build lacks; emu_float16 (the storage_t kernels) is built on first
    use (build.half_build) next to the main build."""

    def __init__(self, build_dir, workdir, reverse=False, misalign=0, extra_builds=()):
        self.build_dir, self.workdir, self.reverse = Path(build_dir), Path(workdir), reverse
        self.extra_builds = tuple(Path(d) for d in extra_builds)
        self.misalign = misalign
        self.kernels = {k["name"]: k for k in json.loads((self.build_dir / "kernels.json").read_text())}
        self.launches = Counter()

    def executable(self, dtype):
        name = f"emu_{np.dtype(dtype).name}"
        for d in (self.build_dir, *self.extra_builds):
            if (d / name).is_file():
                return d / name
        if np.dtype(dtype) == np.float16:   # the storage_t kernels' float16 build, on first use
            self.extra_builds += (build.half_build(self.build_dir.parent),)
            return self.extra_builds[-1] / name
        raise EmulatorError(f"no emulator build for {np.dtype(dtype).name}")

    def get_typed_kernel(self, filename, name, dtype):
        """kernel_loader.get_typed_kernel on the emulator: the name must be a
        kernel of that file (as cupy.RawModule.get_function would insist)."""
        info = self.kernels.get(name)
        if info is None or info["file"] != filename:
            raise EmulatorError(f"no kernel {name} in {filename}")
        return EmulatedKernel(self, info, dtype)

    def launched(self):
        """The kernel names launched so far (any dtype)."""
        return {name for name, _ in self.launches}

    def install(self, monkeypatch):
        is_dev = lambda a: isinstance(a, DeviceArray)  # noqa: E731
        monkeypatch.setattr(backend, "cupy", FakeCupy)
        monkeypatch.setattr(backend, "is_gpu_array", is_dev)
        monkeypatch.setattr(backend, "get_array_module",
                            lambda *arrays: FakeCupy if any(map(is_dev, arrays)) else np)
        monkeypatch.setattr(backend, "to_gpu", FakeCupy.asarray)
        monkeypatch.setattr(backend, "to_cpu", lambda a: FakeCupy.asnumpy(a) if is_dev(a) else np.asarray(a))
        monkeypatch.setattr(backend, "gpu_available", lambda: True)
        monkeypatch.setattr(kernel_loader, "get_typed_kernel", self.get_typed_kernel)
        monkeypatch.setattr(kernel_loader, "POISON_OUTPUTS", True)
