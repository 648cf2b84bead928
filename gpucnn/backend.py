"""The one place that knows about CuPy.

Everything else asks this module which array module an array belongs to
(`get_array_module`), moves arrays (`to_gpu` / `to_cpu`) and picks the device
(`GPUCNN_DEVICE=auto|cpu|gpu`). CuPy is optional: without it, or with CuPy but
no usable GPU (the CI case), everything runs on NumPy.
"""
import contextlib
import functools
import os

import numpy as np

try:  # guarded import; the error is kept to explain a failed GPU request
    import cupy
    _CUPY_IMPORT_ERROR = None
except Exception as exc:  # ImportError, or a broken CUDA install
    cupy = None
    _CUPY_IMPORT_ERROR = exc

DEVICES = ("auto", "cpu", "gpu")


@functools.lru_cache(maxsize=None)
def _gpu_status():
    """(usable, reason): whether a CUDA device can be used, and why not."""
    if cupy is None:
        return False, f"CuPy is not importable ({_CUPY_IMPORT_ERROR!r}); install gpucnn[gpu]"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device, driver too old, ...
        return False, f"CuPy is installed but CUDA is not usable ({exc})"
    if count < 1:
        return False, "CuPy is installed but no CUDA device was found"
    return True, ""


def gpu_available():
    """True when CuPy imports and at least one CUDA device is usable."""
    return _gpu_status()[0]


def gpu_unavailable_reason():
    """Why `gpu_available()` is False ('' when it is True)."""
    return _gpu_status()[1]


def is_gpu_array(a):
    return cupy is not None and isinstance(a, cupy.ndarray)


def one_device_and_dtype(*arrays):
    """'gpu' when every array is a CuPy array, 'cpu' when every one is a NumPy
    array, and they share one dtype; else None (the fused and Numba paths need
    that; mixed inputs take the array code, which promotes as NumPy does)."""
    if len({a.dtype for a in arrays}) != 1:
        return None
    if all(is_gpu_array(a) for a in arrays):
        return "gpu"
    return "cpu" if all(isinstance(a, np.ndarray) for a in arrays) else None


def get_array_module(*arrays):
    """cupy if any argument is a CuPy array, else numpy (like cupy.get_array_module)."""
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def require_gpu(what="this operation"):
    if not gpu_available():
        raise RuntimeError(f"{what} needs a GPU: {gpu_unavailable_reason()}")


def to_gpu(a):
    """Copy a NumPy array (or scalar) to the current GPU; CuPy arrays pass through."""
    if is_gpu_array(a):
        return a
    require_gpu("to_gpu")
    return cupy.asarray(a)


def to_cpu(a):
    """Copy a CuPy array to the host; anything else goes through np.asarray."""
    if is_gpu_array(a):
        return cupy.asnumpy(a)
    return np.asarray(a)


def resolve_device(device=None):
    """'cpu' or 'gpu' from an explicit choice or GPUCNN_DEVICE (default 'auto').

    'auto' picks the GPU when one is usable; asking for 'gpu' without one is a
    RuntimeError that says why.
    """
    choice = (device or os.environ.get("GPUCNN_DEVICE") or "auto").lower()
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {choice!r}")
    if choice == "auto":
        return "gpu" if gpu_available() else "cpu"
    if choice == "gpu":
        require_gpu("device 'gpu'")
    return choice


def xp_for(device):
    """The array module for a resolved device name (the Trainer's device-side
    metric sums and the graph's static buffers are made with it)."""
    return cupy if resolve_device(device) == "gpu" else np


def synchronize(xp=None):
    """Wait for the GPU (no-op on NumPy)."""
    if cupy is not None and xp is cupy:
        cupy.cuda.get_current_stream().synchronize()


def device_info():
    """A dict describing the GPU (empty when none is usable)."""
    if not gpu_available():
        return {}
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"]
    return {
        "gpu_name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": dev.compute_capability,
        "sm_count": props["multiProcessorCount"],
        "driver_version": cupy.cuda.runtime.driverGetVersion(),
        "cuda_runtime_version": cupy.cuda.runtime.runtimeGetVersion(),
        "cupy_version": cupy.__version__,
    }


def gpu_event_times(fn, repeats, warmup, max_seconds):
    """Seconds per call of fn on the GPU, from a CUDA event pair around each
    call (cupyx.profiler.benchmark), warm-up calls excluded."""
    from cupyx.profiler import benchmark
    result = benchmark(fn, n_repeat=max(1, repeats), n_warmup=warmup, max_duration=max_seconds)
    return result.gpu_times[0]


# ---- DLPack: arrays of other libraries, without a copy ------------------------
_DLPACK_CPU = (1, 3)        # kDLCPU, kDLCUDAHost (pinned host memory NumPy can read)
_DLPACK_CUDA = (2, 13)      # kDLCUDA, kDLCUDAManaged


def from_dlpack(obj):
    """A NumPy or CuPy array sharing memory with `obj` (anything with __dlpack__:
    a PyTorch tensor, a JAX array, ...), on the device the memory is on:
    numpy.from_dlpack for host memory, cupy.from_dlpack for CUDA memory."""
    device_type = int(obj.__dlpack_device__()[0]) if hasattr(obj, "__dlpack_device__") else 1
    if device_type in _DLPACK_CUDA:
        require_gpu(f"a {type(obj).__name__} in CUDA memory")
        return cupy.from_dlpack(obj)
    if device_type in _DLPACK_CPU:
        return np.from_dlpack(obj)
    raise TypeError(f"gpucnn.asarray: {type(obj).__name__} lives on DLPack device type {device_type}, "
                    f"neither host nor CUDA memory")


def dlpack_or_same(obj):
    """`obj` itself when it is a NumPy/CuPy array (or no array at all: the op's own
    checks report that), else the zero-copy view of a DLPack-capable object.
    The functional ops and Module.__call__ call this on their inputs."""
    if isinstance(obj, np.ndarray) or is_gpu_array(obj) or not hasattr(obj, "__dlpack__"):
        return obj
    return from_dlpack(obj)


def asarray(obj):
    """A NumPy or CuPy array for `obj`: arrays pass through unchanged, objects
    with __dlpack__ (PyTorch, JAX, ...) are viewed without a copy on their own
    device, anything else (lists, scalars) goes through numpy.asarray."""
    obj = dlpack_or_same(obj)
    return obj if isinstance(obj, np.ndarray) or is_gpu_array(obj) else np.asarray(obj)


# ---- helpers for gpucnn.distributed (device choice per process, host staging, NCCL) ----
def device_count():
    """Number of usable CUDA devices (0 without a GPU)."""
    return cupy.cuda.runtime.getDeviceCount() if gpu_available() else 0


def use_device(index):
    """Make CUDA device `index` current for this process (before any GPU array exists)."""
    require_gpu("use_device")
    cupy.cuda.Device(int(index)).use()


def pinned_empty(shape, dtype):
    """A NumPy array in page-locked host memory (fast, asynchronous device copies)."""
    import cupyx
    return cupyx.empty_pinned(shape, dtype=dtype)


def copy_into(dst, src):
    """dst[...] = src across devices: host<-device, device<-host or same side."""
    if is_gpu_array(dst) and not is_gpu_array(src):
        dst.set(src)
    elif is_gpu_array(src) and not is_gpu_array(dst):
        src.get(out=dst)
    else:
        dst[...] = src


def nccl_module():
    """CuPy's NCCL binding (cupy.cuda.nccl), or a RuntimeError saying what is missing."""
    require_gpu("the NCCL backend")
    from cupy.cuda import nccl
    if not getattr(nccl, "available", False):
        raise RuntimeError("the NCCL backend needs the NCCL library: pip install gpucnn[gpu] "
                           "(nvidia-nccl-cu13)")
    return nccl


def nccl_available():
    try:
        nccl_module()
        return True
    except Exception:
        return False


def array_pointer(a):
    """Device address of a CuPy array's first element."""
    return a.data.ptr


def new_stream():
    """A non-blocking CUDA stream (for communication beside the compute stream)."""
    return cupy.cuda.Stream(non_blocking=True)


def current_stream():
    return cupy.cuda.get_current_stream()


# ---- reading device values back (the only blocking device->host reads of a training step) ----
def item(a):
    """A 0-d (or one-element) array as a Python number: a blocking device->host
    read on the GPU. The Trainer's per-step code never calls it in deferred mode
    (tests count the calls of this function and of to_cpu)."""
    return a.item() if hasattr(a, "item") else a


class HostSnapshot:
    """A non-blocking copy of a few 0-d device values to the host.

    On the GPU the values are packed into one float64 vector on the compute
    stream (so they are the values as of this point of the step sequence), and
    that vector is copied into page-locked host memory on a separate stream,
    which first waits for an event recorded after the pack: the compute stream
    never waits for the copy. ready() polls the copy's event; values() returns
    the host vector (waiting only if the copy is still in flight). On the CPU the
    copy is immediate. Written for CuPy, compiled and emulated, not yet run on a GPU.
    """
    _stream = None

    def __init__(self, arrays):
        xp = get_array_module(*arrays)
        packed = xp.stack([xp.asarray(a).astype(xp.float64).reshape(()) for a in arrays])
        if xp is np:
            self._host, self._done = packed, None
            return
        if HostSnapshot._stream is None:
            HostSnapshot._stream = new_stream()
        packed_ready = cupy.cuda.Event()
        packed_ready.record(current_stream())
        stream = HostSnapshot._stream
        stream.wait_event(packed_ready)
        self._host = pinned_empty(packed.shape, np.float64)
        packed.get(out=self._host, stream=stream, blocking=False)
        self._packed = packed                       # alive until the copy is done
        self._done = cupy.cuda.Event()
        self._done.record(stream)

    def ready(self):
        return self._done is None or self._done.done   # cupy.cuda.Event.done: a non-blocking query

    def values(self):
        if self._done is not None:
            self._done.synchronize()
        return [float(v) for v in self._host]


def to_gpu_async(a):
    """to_gpu without waiting for the device: a new array filled by an
    asynchronous copy on the current stream (cupy.asarray of host memory may
    wait for the stream's earlier work). CuPy arrays pass through."""
    if is_gpu_array(a):
        return a
    require_gpu("to_gpu_async")
    a = np.asarray(a)
    out = cupy.empty(a.shape, a.dtype)
    copy_to_device_async(out, a)
    return out


def copy_to_device_async(dst, src):
    """dst (a device array) <- src (a host array), queued on the current stream:
    the host does not wait for the device (a pageable source is staged by the
    driver at once, so src may be overwritten when this returns)."""
    if isinstance(dst, np.ndarray):
        dst[...] = src
    elif is_gpu_array(src):
        dst[...] = src
    else:
        dst.set(np.ascontiguousarray(src, dtype=dst.dtype), stream=current_stream())


# ---- the overlapped input pipeline (gpucnn.input_pipeline builds on these) -----------
class CudaTransfers:
    """Pinned host buffers, a copy stream, events and asynchronous host->device
    copies for gpucnn.input_pipeline. Streams and events are CuPy's
    (`stream.wait_event(e)`, `e.record(stream)`, `e.synchronize()`, `e.done`).
    Written for CuPy; not yet run on a GPU."""
    gpu = True

    def new_stream(self):
        return new_stream()

    def current_stream(self):
        return current_stream()

    def new_event(self):
        return cupy.cuda.Event(disable_timing=True)

    def pinned_empty(self, shape, dtype):
        return pinned_empty(shape, dtype)

    def device_empty(self, shape, dtype):
        """Allocated while the compute stream is current: the memory pool then
        only reuses the block for that stream's later work (ordered after it)."""
        return cupy.empty(shape, dtype)

    def write_host(self, dst, src):
        np.copyto(dst, src, casting="same_kind")

    def copy_to_device(self, dst, src, stream):
        """dst (device) <- src (pinned host), queued on `stream`: a DMA that
        returns at once and reads src until the stream passes it."""
        dst.set(src, stream=stream)


class _StandInStream:
    def wait_event(self, event):
        pass


class _StandInEvent:
    done = True

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


class StandInTransfers(CudaTransfers):
    """The CPU stand-in of CudaTransfers: NumPy buffers, copies done at once,
    streams and events that are always complete. The pipeline's bookkeeping
    (slots, events, waits, errors) runs unchanged on it."""
    gpu = False

    def new_stream(self):
        return _StandInStream()

    current_stream = new_stream

    def new_event(self):
        return _StandInEvent()

    def pinned_empty(self, shape, dtype):
        return np.empty(shape, dtype)

    device_empty = pinned_empty

    def copy_to_device(self, dst, src, stream):
        dst[...] = src


def transfers(gpu):
    """CudaTransfers on the GPU (needs one), the CPU stand-in otherwise."""
    if gpu:
        require_gpu("the overlapped input pipeline")
        return CudaTransfers()
    return StandInTransfers()


# ---- CUDA graphs (gpucnn.cuda_graph builds the training step on these) ---------------
class _StandInGraph:
    """The CPU stand-in of a captured graph: capture records the step (a closure
    over static buffers) without running it, launch() runs it. It lets the
    bookkeeping around graphs (static buffers, per-step scalars in memory,
    replays after warm-up, recapture) run and be tested without a GPU."""
    is_stand_in = True

    def __init__(self, fn):
        self._fn = fn
        self.kept = []

    def launch(self):
        self._fn()


class _CudaGraph:
    """fn's launches on the current (non-default) stream, captured once with
    cupy.cuda.Stream.begin_capture/end_capture (not executed at capture) and
    replayed by launch(). Every block the memory pool hands out during the
    capture is recorded and kept for the graph's lifetime: the graph keeps
    writing those addresses on replay, and a block returned to the pool could
    be handed to another array meanwhile (cupy#9655). A synchronizing call
    inside fn (a device->host copy, a stream synchronize) makes the capture
    fail, so a captured step has none. Kernels must be compiled before (run fn
    once eagerly). Written for CuPy; compiled and emulated, not yet run on a GPU."""
    is_stand_in = False

    def __init__(self, fn):
        stream = current_stream()
        if stream.ptr == 0:
            raise RuntimeError("CUDA graph capture needs a non-default stream (backend.stream_scope)")
        pool, kept = cupy.get_default_memory_pool(), []

        def recording_malloc(size):
            block = pool.malloc(size)
            kept.append(block)
            return block
        previous = cupy.cuda.get_allocator()
        cupy.cuda.set_allocator(recording_malloc)
        try:
            stream.begin_capture()
            try:
                fn()
            finally:
                graph = stream.end_capture()
        finally:
            cupy.cuda.set_allocator(previous)
        self.graph, self.stream, self.kept = graph, stream, kept
        graph.upload(stream)

    def launch(self):
        self.graph.launch(stream=self.stream)


def capture_graph(fn, gpu):
    """A replayable graph of fn's device work: a CUDA graph on the GPU, the
    closure itself (_StandInGraph) on the CPU."""
    return _CudaGraph(fn) if gpu else _StandInGraph(fn)


@contextlib.contextmanager
def stream_scope(stream):
    """Run the block with `stream` current (None: the CPU, nothing to do),
    ordered after the outer stream's earlier work and before its later work by
    events: no host wait. The GPU graph path keeps one stream for its eager
    steps, copies, capture and replays, across epochs."""
    if stream is None:
        yield
        return
    outer = current_stream()
    before = cupy.cuda.Event(disable_timing=True)
    before.record(outer)
    stream.wait_event(before)
    try:
        with stream:
            yield
    finally:
        after = cupy.cuda.Event(disable_timing=True)
        after.record(stream)
        outer.wait_event(after)
