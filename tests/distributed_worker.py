"""Run under mpiexec by tests/test_distributed.py (not collected by pytest).

    mpiexec -n N python tests/distributed_worker.py check|raise|timeout

check: every rank asserts (a failed assert is an uncaught exception, so the
excepthook from init() aborts the job with a non-zero status and the
traceback); rank 0 prints 'distributed checks passed' and the check count.
raise: the last rank raises while the others wait in a collective.
timeout: rank 0 waits in an all-reduce the others never join.
"""
import sys
import time

import numpy as np

from gpucnn import distributed, nn, optim
from gpucnn import random as grandom
from gpucnn.data.loader import DataLoader

B = 3          # per-rank batch
STEPS = 4
checks = []


def check(name, ok):
    if not ok:
        raise AssertionError(f"check failed on rank {comm.rank}: {name}")
    checks.append(name)


def model(bn=None, seed=0):
    grandom.manual_seed(seed)
    layers = [nn.Conv2d(1, 3, 3, padding=1)]
    if bn is not None:
        layers.append(bn(3))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)]
    return nn.Sequential(*layers).double()


def flat(m):
    return np.concatenate([p.data.reshape(-1) for p in m.parameters()]
                          + [b.reshape(-1).astype(np.float64) for _, b in m.named_buffers()])


def batch(step, n):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, 4, n)


def same_on_every_rank(a):
    every = comm.allgather(np.ascontiguousarray(a))
    return all(np.array_equal(every[0], e) for e in every[1:])


def collectives():
    r, n = comm.rank, comm.size
    a = np.arange(5, dtype=np.float64) + r
    comm.allreduce(a)
    check("allreduce sum", np.array_equal(a, n * np.arange(5) + n * (n - 1) / 2))
    b = np.full(3, float(r))
    comm.allreduce(b, op="mean")
    check("allreduce mean", np.allclose(b, (n - 1) / 2))
    c = np.full((2, 2), r, np.int64)
    comm.broadcast(c, root=n - 1)
    check("broadcast from the last rank", np.all(c == n - 1))
    g = comm.allgather(np.array([r, 10 * r], np.int32))
    check("allgather", g.shape == (n, 2) and np.array_equal(g[:, 1], 10 * np.arange(n)))
    w = comm.iallreduce(np.ones(4))
    w.wait()
    comm.barrier()


def different_inits_end_equal():
    m = model(seed=1000 + comm.rank)            # every rank initialized differently
    check("inits differ before DDP", comm.size == 1 or not same_on_every_rank(flat(m)))
    distributed.DistributedDataParallel(m)
    check("rank 0's parameters after DDP", same_on_every_rank(flat(m)))
    check("...which are rank 0's init", np.array_equal(flat(m), flat(model(seed=1000))))


def equivalence(make_opt, bn, cap_mb):
    """N ranks at batch B step by step equal one process at batch N*B."""
    ref = model(nn.BatchNorm2d if bn else None)
    mine = model(nn.BatchNorm2d if bn else None)
    if bn:
        mine = nn.SyncBatchNorm.convert_sync_batchnorm(mine)
    ddp = distributed.DistributedDataParallel(mine, bucket_cap_mb=cap_mb)
    started_in_backward = []
    start = comm.iallreduce

    def recording_iallreduce(a):   # started before the first layer's backward has run?
        started_in_backward.append(mine[0].weight.grad is None)
        return start(a)
    comm.iallreduce = recording_iallreduce
    ref_opt, opt = make_opt(ref.parameters()), make_opt(ddp.parameters())
    loss = nn.SoftmaxCrossEntropy()
    rows = slice(comm.rank * B, (comm.rank + 1) * B)
    for step in range(STEPS):
        x, y = batch(step, comm.size * B)
        ref_opt.zero_grad()
        _, d = loss(ref(x), y)
        ref.backward(d)
        ref_opt.step()
        opt.zero_grad()
        _, d = loss(ddp(x[rows]), y[rows])
        ddp.backward(d)
        opt.step()
        what = f"{type(opt).__name__} bn={bn} cap={cap_mb} step {step}"
        check(f"{what}: equals one process at batch N*B", np.allclose(flat(mine), flat(ref), rtol=1e-9, atol=1e-12))
        check(f"{what}: identical on every rank", same_on_every_rank(flat(mine)))
    del comm.iallreduce
    if comm.size > 1 and len(ddp._buckets) > 1:   # all but the last bucket overlap the backward
        check("buckets start during the backward", started_in_backward[-len(ddp._buckets):]
              == [True] * (len(ddp._buckets) - 1) + [False])
    return len(ddp._buckets or ())


def no_sync_accumulates():
    ref, mine = model(), model()
    ddp = distributed.DistributedDataParallel(mine)
    loss = nn.SoftmaxCrossEntropy()
    rows = slice(comm.rank * B, (comm.rank + 1) * B)
    for step in range(2):
        x, y = batch(step, comm.size * B)
        _, d = loss(ref(x), y)
        ref.backward(d)
        _, d = loss(ddp(x[rows]), y[rows])
        if step == 0:
            with ddp.no_sync():
                ddp.backward(d)
        else:
            ddp.backward(d)
    grads = lambda m: np.concatenate([p.grad.reshape(-1) for p in m.parameters()])  # noqa: E731
    check("no_sync accumulates, the next backward averages the sum", np.allclose(grads(mine), grads(ref),
                                                                                   rtol=1e-9, atol=1e-12))


def eval_uses_rank0_buffers():
    """Plain BatchNorm: each rank's running statistics drift with its own batch;
    eval() broadcasts rank 0's, which is what a checkpoint of rank 0 holds."""
    ddp = distributed.DistributedDataParallel(model(nn.BatchNorm2d))
    x, y = batch(comm.rank, B)
    _, d = nn.SoftmaxCrossEntropy()(ddp(x), y)
    ddp.backward(d)
    buffers = lambda: np.concatenate([b.reshape(-1).astype(float) for _, b in ddp.named_buffers()])  # noqa: E731
    check("BN buffers differ after a training step", comm.size == 1 or not same_on_every_rank(buffers()))
    ddp.eval()
    check("eval(): rank 0's buffers everywhere", same_on_every_rank(buffers()))


def trainer_nonfinite_on_one_rank():
    """A NaN batch on the last rank only: every rank skips that step (no rank
    waits in a collective the others never enter); metrics are global sums."""
    from gpucnn.commands.train_distributed import Job
    from gpucnn.trainer import Trainer
    net = model()
    trainer = Trainer(net, optim.SGD(net.parameters(), lr=0.1), skip_nonfinite=True)
    trainer.model = distributed.DistributedDataParallel(net)
    sums = []
    trainer.reduce_sums = lambda *v: sums.append(Job(comm).reduce_sums(*v)) or sums[-1]
    x, y = batch(0, 3 * B)
    if comm.rank == comm.size - 1:
        x[B:2 * B] = np.nan          # the second of three batches
    trainer.train_epoch(DataLoader(x, y, batch_size=B, shuffle=False, prefetch=0))
    check("the non-finite step is skipped on every rank", trainer.nonfinite_steps == 1)
    check("parameters still identical", same_on_every_rank(flat(net)))
    check("samples seen: a sum over the ranks", sums[-1][0] == comm.size * 2 * B)


def sync_bn_unequal_batches():
    """Rank r holds r + 2 rows; a sum loss; statistics and gradients as one BatchNorm of all rows."""
    counts = [r + 2 for r in range(comm.size)]
    start = sum(counts[:comm.rank])
    rng = np.random.default_rng(7)
    x = rng.standard_normal((sum(counts), 3, 5, 4))
    dy = rng.standard_normal(x.shape)
    ref = nn.BatchNorm2d(3, momentum=None).double()
    sync = nn.SyncBatchNorm(3, momentum=None).double()
    for layer in (ref, sync):
        layer.weight.data[:] = [0.5, 1.5, -2.0]
        layer.bias.data[:] = [0.1, 0.0, -0.3]
    mine = slice(start, start + counts[comm.rank])
    y_ref, y = ref(x), sync(x[mine])
    dx_ref, dx = ref.backward(dy), sync.backward(dy[mine])
    check("SyncBN forward, unequal batches", np.allclose(y, y_ref[mine], rtol=1e-10, atol=1e-12))
    check("SyncBN dx, unequal batches", np.allclose(dx, dx_ref[mine], rtol=1e-10, atol=1e-12))
    dw = comm.allreduce(sync.weight.grad.copy())
    check("SyncBN dweight summed over ranks", np.allclose(dw, ref.weight.grad, rtol=1e-10))
    check("SyncBN running stats", np.allclose(sync.running_var, ref.running_var, rtol=1e-10)
          and np.allclose(sync.running_mean, ref.running_mean, rtol=1e-10, atol=1e-14))


def sampler_with_loader():
    n = 23
    x = np.arange(n, dtype=np.float64)[:, None]
    sampler = distributed.DistributedSampler(n, comm.size, comm.rank, seed=3)
    sampler.set_epoch(2)
    loader = DataLoader(x, np.arange(n), batch_size=4, sampler=sampler, prefetch=0)
    mine = np.concatenate([yb for _, yb in loader])
    check("loader yields the sampler's indices", sorted(mine.tolist()) == sorted(sampler.indices().tolist()))
    every = comm.allgather(np.ascontiguousarray(mine))
    check("shards cover every sample", set(every.reshape(-1).tolist()) == set(range(n)))


def nccl_emulated():
    """The NCCL backend's code path with a fake CuPy/NCCL underneath: NumPy arrays
    play device arrays, the fake NcclCommunicator reduces over MPI. Checks the
    start-up (GPU from the node-local rank, unique id from rank 0) and DDP on it."""
    from types import SimpleNamespace

    from mpi4py import MPI

    from gpucnn.distributed import nccl_backend
    arrays, calls = {}, []

    def pointer(a):
        arrays[id(a)] = a
        return id(a)

    class Stream:
        ptr = 0

        def record(self):
            return SimpleNamespace(done=True)

        def wait_event(self, event):
            calls.append("wait_event")

        def synchronize(self):
            pass

    class FakeComm:
        def __init__(self, size, uid, rank):
            calls.append(("init", size, rank, sum(uid)))

        def allReduce(self, send, recv, count, dtype, op, stream):
            assert send == recv and arrays[send].size == count and op == "SUM"
            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, arrays[send])

        def bcast(self, ptr, count, dtype, root, stream):
            MPI.COMM_WORLD.Bcast(arrays[ptr], root=root)

        def allGather(self, send, recv, count, dtype, stream):
            MPI.COMM_WORLD.Allgather(arrays[send], arrays[recv])

    fake_nccl = SimpleNamespace(get_unique_id=lambda: tuple(range(-64, 64)), NcclCommunicator=FakeComm,
                                NCCL_SUM="SUM", **{f"NCCL_{t}": t for t in
                                                   ("FLOAT16", "FLOAT32", "FLOAT64", "INT32", "INT64")})
    fake_backend = SimpleNamespace(device_count=lambda: 2, use_device=lambda i: calls.append(("device", i)),
                                   nccl_module=lambda: fake_nccl, new_stream=Stream, current_stream=Stream,
                                   array_pointer=pointer, get_array_module=lambda a: np,
                                   is_gpu_array=lambda a: isinstance(a, np.ndarray) and a.dtype.kind == "f")
    real = nccl_backend._backend
    nccl_backend._backend = fake_backend
    try:
        nc = nccl_backend.NCCLCommunicator()
        check("NCCL: GPU of the node-local rank", ("device", nc.local_rank % 2) in calls)
        check("NCCL: every rank joins with rank 0's unique id", ("init", comm.size, comm.rank, -64) in calls)
        g = nc.allgather(np.array([float(comm.rank)]))
        check("NCCL: allgather", np.array_equal(g[:, 0], np.arange(comm.size)))
        a = np.full(3, float(comm.rank))
        nc.broadcast(a, root=comm.size - 1)
        check("NCCL: broadcast", np.all(a == comm.size - 1))
        ref, mine = model(), model(seed=comm.rank)
        ddp = distributed.DistributedDataParallel(mine, comm=nc, bucket_cap_mb=0.0005)
        loss = nn.SoftmaxCrossEntropy()
        x, y = batch(0, comm.size * B)
        _, d = loss(ref(x), y)
        ref.backward(d)
        rows = slice(comm.rank * B, (comm.rank + 1) * B)
        _, d = loss(ddp(x[rows]), y[rows])
        ddp.backward(d)
        grads = lambda m: np.concatenate([p.grad.reshape(-1) for p in m.parameters()])  # noqa: E731
        check("NCCL: DDP gradients equal one process at N*B", np.allclose(grads(mine), grads(ref), rtol=1e-9,
                                                                         atol=1e-12))
        check("NCCL: the compute stream waits for the side stream", comm.size == 1 or "wait_event" in calls)
    finally:
        nccl_backend._backend = real


def staged_through_host():
    """The MPI backend's path for device arrays (copies through pinned host
    buffers), with a NumPy subclass playing the device array."""
    from types import SimpleNamespace

    from gpucnn.distributed import mpi_backend

    class Device(np.ndarray):
        pass
    copies = []

    def copy_into(dst, src):
        copies.append((type(dst).__name__, type(src).__name__))
        np.copyto(dst, src)
    fake = SimpleNamespace(is_gpu_array=lambda a: isinstance(a, Device), pinned_empty=np.empty,
                           copy_into=copy_into, to_gpu=lambda a: a.view(Device))
    real = mpi_backend._backend
    mpi_backend._backend = fake
    try:
        a = np.full(4, comm.rank + 1.0).view(Device)
        w1, w2 = comm.iallreduce(a), comm.iallreduce(np.ones(4).view(Device))   # two in flight, one shape
        w2.wait()
        w1.wait()
        check("staged all-reduce", np.all(np.asarray(a) == comm.size * (comm.size + 1) / 2))
        check("staged: device -> host -> device", ("ndarray", "Device") in copies and ("Device", "ndarray") in copies)
        check("staged: two pinned buffers pooled for one shape", len(comm._pinned[((4,), "float64")]) == 2)
        b = np.full(2, float(comm.rank)).view(Device)
        comm.broadcast(b, root=comm.size - 1)
        check("staged broadcast", np.all(np.asarray(b) == comm.size - 1))
        g = comm.allgather(np.array([comm.rank * 1.0]).view(Device))
        check("staged allgather", isinstance(g, Device) and np.array_equal(np.asarray(g)[:, 0], np.arange(comm.size)))
    finally:
        mpi_backend._backend = real


def main(mode):
    global comm
    comm = distributed.init(timeout=2.0 if mode == "timeout" else None)
    if mode == "raise":
        comm.barrier()
        if comm.rank == comm.size - 1:
            raise RuntimeError(f"deliberate failure on rank {comm.rank}")
        comm.allreduce(np.zeros(3))   # never completes: the failing rank does not join
        return
    if mode == "timeout":
        if comm.rank == 0:
            comm.allreduce(np.zeros(3))
        else:
            time.sleep(600)   # far beyond the timeout: only the abort ends it early
        return
    collectives()
    different_inits_end_equal()
    buckets = equivalence(lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), False, 0.0005)
    check("small cap: several buckets", comm.size == 1 or buckets > 2)
    equivalence(lambda p: optim.Adam(p, lr=0.01, weight_decay=0.001), False, 25)
    equivalence(lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), True, 0.001)
    no_sync_accumulates()
    eval_uses_rank0_buffers()
    trainer_nonfinite_on_one_rank()
    sync_bn_unequal_batches()
    sampler_with_loader()
    nccl_emulated()
    if comm.backend == "mpi":
        staged_through_host()
    comm.barrier()
    if comm.rank == 0:
        print(f"distributed checks passed: {comm.size} processes, {len(checks)} checks")


if __name__ == "__main__":
    main(sys.argv[1])
