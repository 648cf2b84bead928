"""DistributedDataParallel: one model replica per process, gradients averaged.

Construction broadcasts rank 0's parameters and buffers, so replicas that
were initialized differently start equal. In training mode every forward
broadcasts rank 0's buffers again (PyTorch's broadcast_buffers=True: plain
BatchNorm running statistics then follow rank 0; SyncBatchNorm keeps them
equal anyway), and so does eval(), so every rank evaluates with rank 0's.

Backward, as in PyTorch DDP: the parameters are cut into fixed-order buckets
of about `bucket_cap_mb` MB (reverse registration order, roughly the order
in which backward produces gradients; one dtype per bucket; the first bucket
is capped at 1 MB, as PyTorch does, so communication starts early). Each leaf
module that owns parameters gets a hook after its backward; when every
module owning a bucket's parameters has finished, the bucket's gradients are
copied into one flat buffer and its all-reduce is started (non-blocking
MPI, or an NCCL side stream), while the backward goes on with the earlier
layers. Buckets are started strictly in index order on every rank, since all
ranks must issue collectives in the same order. After the backward the
buckets are waited on, divided by the world size and copied back into
`.grad`: every rank holds the mean of the ranks' gradients. A parameter
whose gradient stayed None on a rank counts as zeros.

`with ddp.no_sync():` skips the reduction (gradients accumulate locally, for
gradient accumulation); the next synced backward reduces the accumulated sum.
state_dict()/load_state_dict() use the inner module's keys (no 'module.'
prefix, unlike PyTorch), so checkpoints move freely between one process and
many.
"""
import contextlib

import numpy as np

from .. import backend
from ..nn.module import Module
from .world import get_world


class _Bucket:
    def __init__(self, params):
        self.params = params
        self.buffer = None
        self.work = None
        self.pending = 0

    def flatten(self):
        """Copy the gradients into the flat buffer (zeros for a None gradient)."""
        xp = backend.get_array_module(self.params[0].data)
        total = sum(p.size for p in self.params)
        if self.buffer is None or backend.get_array_module(self.buffer) is not xp \
                or self.buffer.dtype != self.params[0].data.dtype or self.buffer.size != total:
            self.buffer = xp.empty(total, dtype=self.params[0].data.dtype)
        offset = 0
        for p in self.params:
            segment = self.buffer[offset:offset + p.size]
            if p.grad is None:
                segment[...] = 0
            else:
                segment[...] = p.grad.reshape(-1)
            offset += p.size

    def unflatten(self, scale):
        self.buffer *= scale
        offset = 0
        for p in self.params:
            segment = self.buffer[offset:offset + p.size].reshape(p.data.shape)
            if p.grad is None or p.grad.shape != p.data.shape:
                p.grad = segment.copy()
            else:
                p.grad[...] = segment
            offset += p.size


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training over `comm` (default: init())."""

    FIRST_BUCKET_MB = 1

    def __init__(self, module, comm=None, bucket_cap_mb=25, broadcast_buffers=True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a Module, got {type(module).__name__}")
        if bucket_cap_mb <= 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.module = module
        object.__setattr__(self, "comm", get_world() if comm is None else comm)
        self.bucket_cap_bytes = int(bucket_cap_mb * 2 ** 20)
        self.broadcast_buffers = bool(broadcast_buffers)
        self._sync = True
        self._buckets = None
        self._owners = {}        # id(leaf module) -> [(bucket index, count)]
        self._active = False
        self._next = 0           # the next bucket to start
        self._install_hooks()
        self.broadcast_state(parameters=True)

    # ---- state --------------------------------------------------------------
    def broadcast_state(self, parameters=True):
        """Overwrite this rank's buffers (and parameters) with rank 0's, packed
        into one flat array per (device, dtype)."""
        if self.comm.size == 1:
            return
        arrays = [b for _, b in self.module.named_buffers()]
        if parameters:
            arrays = [p.data for p in self.module.parameters()] + arrays
        groups = {}
        for a in arrays:
            groups.setdefault((backend.is_gpu_array(a), str(a.dtype)), []).append(a)
        for group in groups.values():
            xp = backend.get_array_module(group[0])
            flat = xp.concatenate([a.reshape(-1) for a in group])
            self.comm.broadcast(flat, root=0)
            offset = 0
            for a in group:
                a[...] = flat[offset:offset + a.size].reshape(a.shape)
                offset += a.size

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state, strict=True):
        return self.module.load_state_dict(state, strict)

    def train(self, mode=True):
        """Switching to eval mode broadcasts rank 0's buffers once more, so every
        rank evaluates with the running statistics a checkpoint of rank 0 holds
        (a collective: call it on every rank)."""
        super().train(mode)
        if not mode and self.broadcast_buffers and "comm" in self.__dict__:
            self.broadcast_state(parameters=False)
        return self

    # ---- forward / backward ---------------------------------------------------
    def forward(self, x):
        if self.training and self.broadcast_buffers:
            self.broadcast_state(parameters=False)
        return self.module(x)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside: backward accumulates local gradients and communicates nothing."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def backward(self, dout):
        """The module's backward; afterwards every .grad is the mean over the ranks."""
        if not self._sync or self.comm.size == 1:
            return self.module.backward(dout)
        self._plan()
        for bucket in self._buckets:
            bucket.pending, bucket.work = self._owner_count[id(bucket)], None
        self._next, self._active = 0, True
        try:
            dx = self.module.backward(dout)
        finally:
            self._active = False
        self._start_ready(final=True)
        scale = 1.0 / self.comm.size
        for bucket in self._buckets:
            bucket.work.wait()
            bucket.unflatten(scale)
        return dx

    # ---- buckets and hooks ---------------------------------------------------
    def _leaves(self):
        """(module, its own parameters) for every module that owns parameters."""
        for _, m in self.module.named_modules():
            if m._parameters:
                yield m, list(m._parameters.values())

    def _install_hooks(self):
        for m, _ in self._leaves():
            inner = m.backward

            def hooked(dout, _inner=inner, _m=m):
                dx = _inner(dout)
                if self._active:
                    self._finished(_m)
                return dx
            object.__setattr__(m, "backward", hooked)

    def _plan(self):
        """Buckets over the parameters in reverse registration order, cut at the
        size cap or a dtype/device change; rebuilt when dtypes or devices change."""
        params = self.module.parameters()
        signature = tuple((id(p), backend.is_gpu_array(p.data), str(p.data.dtype)) for p in params)
        if self._buckets is not None and signature == self._signature:
            return
        buckets, current, size = [], [], 0
        for p in reversed(params):
            same_kind = not current or (backend.is_gpu_array(current[0].data), current[0].data.dtype) == \
                (backend.is_gpu_array(p.data), p.data.dtype)
            nbytes = p.size * np.dtype(p.data.dtype).itemsize
            cap = self.bucket_cap_bytes if buckets else min(self.bucket_cap_bytes, self.FIRST_BUCKET_MB * 2 ** 20)
            if current and (not same_kind or size + nbytes > cap):
                buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            buckets.append(_Bucket(current))
        index = {id(p): i for i, b in enumerate(buckets) for p in b.params}
        self._owners, count = {}, {}
        for m, own in self._leaves():
            hits = {}
            for p in own:
                hits[index[id(p)]] = hits.get(index[id(p)], 0) + 1
            self._owners[id(m)] = list(hits.items())
            for i, n in hits.items():
                count[i] = count.get(i, 0) + n
        self._buckets, self._signature = buckets, signature
        self._owner_count = {id(b): count.get(i, 0) for i, b in enumerate(buckets)}

    def _finished(self, module):
        """A leaf's backward is done: its parameters' gradients are final."""
        for i, n in self._owners.get(id(module), ()):
            self._buckets[i].pending -= n
        self._start_ready(final=False)
        progress = getattr(self.comm, "progress", None)
        if progress is not None:
            progress()

    def _start_ready(self, final):
        """Start buckets in index order while the next one is complete (all, at the end)."""
        while self._next < len(self._buckets):
            bucket = self._buckets[self._next]
            if bucket.pending > 0 and not final:
                return
            bucket.flatten()
            bucket.work = self.comm.iallreduce(bucket.buffer)
            self._next += 1

    def extra_repr(self):
        return f"world size {self.comm.size}, bucket cap {self.bucket_cap_bytes / 2 ** 20:g} MB"
