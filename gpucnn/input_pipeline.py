"""The overlapped input pipeline: batch i+1's host->device copy runs during step i.

DeviceBatches wraps a loader of host (NumPy) batches and yields device
batches. `depth` slots (default 2: double buffering) each own a pinned host
buffer, a device buffer and two events:

    at the request for batch i (the consumer has queued step i-1 by then):
      1. record slot(i-1).consumed on the compute stream (the current one)
      2. for each batch b up to i+depth-1 not yet issued, in slot b % depth:
           host:        wait for slot.copied (the slot's previous copy) only if
                        it has not finished: the pinned buffer is then free
           host:        batch b -> pinned buffer (memcpy, cast to x_dtype)
           copy stream: wait slot.consumed (the step that read the slot's
                        previous batch; for newly allocated device buffers, the
                        compute stream's work queued so far), copy pinned ->
                        device, record slot.copied
      3. compute stream: wait slot(i).copied (no host wait), run the transform
         (augmentations, on the device), yield the batch

So batch i+1's copy is queued before step i and overlaps it; a host buffer is
never refilled while its copy may still be reading it, and a device buffer is
never overwritten while a queued step may still read it. The host waits only
when it runs more than depth-1 batches ahead of the copies (bounding how far
it runs ahead); those waits are counted in `host_waits`.

A yielded batch that is a slot's buffer (no transform, or one that returns x
unchanged) is valid until the next batch is requested, as the step that uses
it is queued by then. The last, smaller batch uses the first rows of the
slot. A loader error at batch k is raised when the consumer asks for batch k
(the batches before it are delivered), as InputPipelineError naming it.
Batches the loader already gives on the device (CuPy arrays) pass through
without a copy.

On the CPU (`gpu=False`) backend.StandInTransfers runs the same bookkeeping
with NumPy buffers and immediate copies. GPU status: written for CuPy
(backend.CudaTransfers), not yet run on a GPU.
"""
import numpy as np

from . import backend


class InputPipelineError(RuntimeError):
    """Loading or augmenting a batch failed; `batch` is its 1-based number."""

    def __init__(self, message, batch):
        super().__init__(message)
        self.batch = batch


class _Slot:
    def __init__(self, transfers):
        self.copied, self.consumed = transfers.new_event(), transfers.new_event()
        self.host = self.device = None      # (x, y) buffers, allocated for the batch shape
        self.n = 0                          # rows of the current batch
        self.copying = False                # a copy was queued (copied recorded after it)
        self.delivered = False              # its batch went to the consumer (consumed recorded after)

    def fits(self, xb, yb, x_dtype):
        return self.host is not None and all(
            len(b) >= len(a) and b.shape[1:] == a.shape[1:] and b.dtype == dt
            for a, b, dt in ((xb, self.host[0], x_dtype), (yb, self.host[1], yb.dtype)))

    def batch(self):
        return self.device[0][:self.n], self.device[1][:self.n]


class DeviceBatches:
    """Iterate over `loader`'s (x, y) host batches as device batches (see the module docstring).

    transform: callable(x, y, rng) -> (x, y) run on each device batch on the
        compute stream (gpucnn.data.transforms work on CuPy arrays), with `rng`
        (a device generator, gpucnn.random.device_generator).
    x_dtype: float inputs are cast to it on the host copy (the model's dtype).
    gpu: use backend.CudaTransfers, else the CPU stand-in; `transfers` overrides
        both (tests pass a recording fake).
    """

    def __init__(self, loader, transform=None, rng=None, depth=2, x_dtype=None, gpu=False, transfers=None):
        if int(depth) < 2:
            raise ValueError(f"DeviceBatches: depth must be >= 2 (double buffering), got {depth}")
        if transform is not None and rng is None:
            raise ValueError(f"DeviceBatches: the transform {transform!r} needs an rng")
        self.loader, self.transform, self.rng = loader, transform, rng
        self.depth, self.x_dtype = int(depth), x_dtype
        self.transfers = transfers if transfers is not None else backend.transfers(gpu)
        self.host_waits = 0         # host waits for a slot's previous copy (running ahead)

    def __len__(self):
        return len(self.loader)

    def _total(self):
        try:
            return f" of {len(self.loader)}"
        except TypeError:
            return ""

    def __iter__(self):
        t = self.transfers
        copy_stream = t.new_stream()
        slots = [_Slot(t) for _ in range(self.depth)]
        source = iter(self.loader)
        issued, exhausted, failure = 0, False, None
        on_device = {}                        # index -> a batch the loader gave on the device already
        try:
            for i in range(2 ** 62):
                if i > 0:
                    previous = slots[(i - 1) % self.depth]
                    previous.consumed.record(t.current_stream())
                    previous.delivered = True
                while failure is None and not exhausted and issued < i + self.depth:
                    try:
                        xb, yb = next(source)
                        if len(xb) != len(yb):
                            raise ValueError(f"{len(xb)} inputs but {len(yb)} labels")
                    except StopIteration:
                        exhausted = True
                        break
                    except Exception as exc:   # raised at its turn, after the batches before it
                        failure = (issued, exc)
                        break
                    if backend.is_gpu_array(xb) or backend.is_gpu_array(yb):
                        on_device[issued] = (xb, yb)
                    else:
                        try:
                            self._issue(slots[issued % self.depth], issued, np.asarray(xb), np.asarray(yb),
                                        copy_stream)
                        except Exception as exc:
                            raise InputPipelineError(f"input pipeline: copying batch {issued + 1}{self._total()} "
                                                     f"failed: {type(exc).__name__}: {exc}", issued + 1) from exc
                    issued += 1
                if i == issued:
                    if failure is not None:
                        k, exc = failure
                        raise InputPipelineError(f"input pipeline: loading batch {k + 1}{self._total()} failed: "
                                                 f"{type(exc).__name__}: {exc}", k + 1) from exc
                    return
                if i in on_device:
                    yield self._transformed(i, *on_device.pop(i))
                    continue
                slot = slots[i % self.depth]
                t.current_stream().wait_event(slot.copied)
                yield self._transformed(i, *slot.batch())
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()                       # a DataLoader's prefetch thread stops
            for slot in slots:                # no pinned buffer is freed under a running copy
                if slot.copying:
                    slot.copied.synchronize()

    def _issue(self, slot, index, xb, yb, copy_stream):
        """Queue batch `index`'s copy into `slot` (step 2 of the module docstring)."""
        t = self.transfers
        x_dtype = self.x_dtype if self.x_dtype is not None and xb.dtype.kind == "f" else xb.dtype
        if slot.copying and not slot.copied.done:
            self.host_waits += 1
            slot.copied.synchronize()         # its previous copy still reads the pinned buffer
        if not slot.fits(xb, yb, x_dtype):    # first batch, or a larger/other shape
            slot.host = (t.pinned_empty(xb.shape, x_dtype), t.pinned_empty(yb.shape, yb.dtype))
            slot.device = (t.device_empty(xb.shape, x_dtype), t.device_empty(yb.shape, yb.dtype))
            # The pool may hand out a block that work queued on the compute stream still
            # uses (it reuses blocks in that stream's order): the copy waits for that work.
            slot.consumed.record(t.current_stream())
            slot.delivered = True
        n = slot.n = len(xb)
        t.write_host(slot.host[0][:n], xb)
        t.write_host(slot.host[1][:n], yb)
        if slot.delivered:
            copy_stream.wait_event(slot.consumed)
        t.copy_to_device(slot.device[0][:n], slot.host[0][:n], copy_stream)
        t.copy_to_device(slot.device[1][:n], slot.host[1][:n], copy_stream)
        slot.copied.record(copy_stream)
        slot.copying, slot.delivered = True, False

    def _transformed(self, index, xb, yb):
        if self.transform is None:
            return xb, yb
        try:
            return self.transform(xb, yb, self.rng)
        except Exception as exc:
            raise InputPipelineError(f"input pipeline: augmenting batch {index + 1}{self._total()} with "
                                     f"{self.transform!r} failed: {type(exc).__name__}: {exc}",
                                     index + 1) from exc
