"""The autotuner's cache: which kernel version won for one configuration.

Key: (op, shapes, dtype, precision, GPU name), as one JSON-safe string, e.g.
    conv2d_forward|x=8x64x56x56|w=64x64x3x3|s=1x1|p=1x1|float32|high|NVIDIA H200
Value: {"version": v, "times_ms": {v: median ms, ...}}.

Storage: a dict in memory (per process), backed by one JSON file,
$GPUCNN_CACHE_DIR/autotune-v1.json (default $XDG_CACHE_HOME/gpucnn or
~/.cache/gpucnn). The file is read once, on the first lookup; each new
result is merged into the file's current content and written atomically
(a temporary file in the same directory, then os.replace), so concurrent
processes lose at most each other's newest entries, never the file. A file
that cannot be read or parsed is ignored (and replaced on the next write);
a failed write leaves the in-memory result. The file holds kernel version
numbers only: nothing in it is executed, and a version that no longer exists
is ignored (the caller passes the valid candidates).

Timing runs on the GPU (backend.gpu_event_times: CUDA events, warm-up
first); it is "compiled and emulated, not yet run on a GPU" code: the
selection and cache logic are tested on the CPU with an injected timer.
"""
import json
import os
import tempfile
import threading
from pathlib import Path

from .. import backend, backends

FILE_NAME = "autotune-v1.json"
TIMING = dict(repeats=20, warmup=3, max_seconds=0.5)


def cache_dir():
    env = os.environ.get("GPUCNN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpucnn"


def make_key(op, shapes, dtype, precision, gpu_name):
    """shapes: {name: tuple of ints}, in a fixed order."""
    parts = [op] + [f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items()]
    return "|".join(parts + [str(dtype), precision, gpu_name])


class Cache:
    def __init__(self, path=None):
        self._path = Path(path) if path else None
        self._memory, self._loaded = {}, False
        self._lock = threading.Lock()

    @property
    def path(self):
        return self._path or cache_dir() / FILE_NAME

    def _read_file(self):
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("version"), int)} \
            if isinstance(data, dict) else {}

    def get(self, key):
        with self._lock:
            if not self._loaded:
                self._memory = {**self._read_file(), **self._memory}
                self._loaded = True
            entry = self._memory.get(key)
        return None if entry is None else entry["version"]

    def put(self, key, version, times_ms):
        entry = {"version": int(version), "times_ms": {str(v): t for v, t in times_ms.items()}}
        with self._lock:
            self._memory[key] = entry
            merged = {**self._read_file(), key: entry}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".autotune-", suffix=".json")
                with os.fdopen(fd, "w") as f:
                    json.dump(merged, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except OSError:
                pass   # the in-memory choice still holds for this process

    def clear_memory(self):
        with self._lock:
            self._memory, self._loaded = {}, False


CACHE = Cache()


def gpu_name():
    return backend.device_info().get("gpu_name", "unknown GPU")


def time_ms(fn):
    """Median milliseconds of fn() on the GPU."""
    return 1e3 * float(_median(backend.gpu_event_times(fn, **TIMING)))


def _median(values):
    values = sorted(float(v) for v in values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def choose(op, shapes, dtype, precision, candidates, default, run, timer=None):
    """The version to run. Autotuning off, or one candidate: `default`.
    On: the cached winner of this key, else time run(v) for every candidate,
    cache the fastest (ties: the lower version) and return it."""
    if not backends.autotune or len(candidates) < 2:
        return default
    key = make_key(op, shapes, dtype, precision, gpu_name())
    cached = CACHE.get(key)
    if cached in candidates:
        return cached
    timer = timer or time_ms
    times = {v: timer(lambda v=v: run(v)) for v in candidates}
    best = min(candidates, key=lambda v: (times[v], v))
    CACHE.put(key, best, times)
    return best
