"""`gpucnn train --distributed`: the data-parallel parts of the train command.

Under `mpiexec -n N gpucnn train --distributed ...` every process trains a
replica (DistributedDataParallel) on its shard of the training set
(DistributedSampler, reshuffled per epoch from --seed), --batch-size images
per process and step (PyTorch's convention: the global batch is N times
that). --sync-bn turns every BatchNorm into SyncBatchNorm; --scale-lr linear
multiplies the learning rate by N and warms it up linearly over --warmup
epochs (5 unless given; Goyal et al. 2017). Validation and test sets are split
rank::N (disjoint, nothing repeated) and every metric is reduced as sums and
counts. Rank 0 alone prints and writes metrics, plots and checkpoints; each
rank draws its own augmentation and dropout stream. A checkpoint remembers N
and --resume refuses another N.
"""
import os
import sys

import numpy as np

from ..distributed.launch import mpi4py_missing
from .errors import CommandError


def add_arguments(p):
    g = p.add_argument_group("data-parallel training (start with mpiexec -n N)")
    g.add_argument("--distributed", action="store_true",
                   help="train on every process mpiexec started (--batch-size is per process)")
    g.add_argument("--sync-bn", action="store_true", help="batch-norm statistics over every process's batch")
    g.add_argument("--scale-lr", choices=("none", "linear"), default="none",
                   help="linear: learning rate x processes, warmed up over --warmup epochs (5 unless given)")


class Job:
    """This process's place in the run: rank, size, is_main and the communicator."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank, self.size = (comm.rank, comm.size) if comm is not None else (0, 1)
        self.is_main = self.rank == 0

    def shard(self, x, y):
        """This rank's rows of an evaluation set (rank::size: disjoint, covering)."""
        return (x, y) if x is None or self.size == 1 else (x[self.rank::self.size], y[self.rank::self.size])

    def reduce_sums(self, *sums):
        total = self.comm.allreduce(np.array(sums, dtype=np.float64))
        return tuple(int(t) if isinstance(v, (int, np.integer)) else float(t) for v, t in zip(sums, total.tolist()))


def setup(args, device):
    """The Job for these arguments; adjusts args (lr, warmup, outputs) in place."""
    if not args.distributed:
        if args.sync_bn or args.scale_lr != "none":
            raise CommandError("--sync-bn and --scale-lr need --distributed (under mpiexec -n N)")
        return Job()
    missing = mpi4py_missing()
    if missing:
        raise CommandError(f"--distributed needs mpi4py: {missing}")
    from .. import distributed
    from ..recipes import DEFAULT_LR
    try:
        job = Job(distributed.init(device=device))
    except RuntimeError as exc:
        raise CommandError(f"--distributed: {exc}") from None
    if args.scale_lr == "linear":
        args.lr = (DEFAULT_LR[args.optimizer] if args.lr is None else args.lr) * job.size
        args.warmup = args.warmup or 5
    if not job.is_main:   # rank 0 alone prints and writes files
        args.metrics_out = args.plot = args.checkpoint = args.monitor_plot = None
        sys.stdout = open(os.devnull, "w")
    return job


def wrap_trainer(trainer, job, args):
    """Replace the trainer's model by its data-parallel replica (after SyncBN conversion)."""
    if job.comm is None:
        return
    from .. import distributed, nn
    from .. import random as grandom
    model = nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model) if args.sync_bn else trainer.model
    trainer.model = distributed.DistributedDataParallel(model, job.comm)
    trainer.reduce_sums = job.reduce_sums
    grandom.manual_seed([args.seed, job.rank])   # per-rank augmentation and dropout


def check_resume(job, state, args):
    """Refuse a checkpoint (read_checkpoint's dict) written by another number of processes."""
    user = (state.get("extra") or {}).get("user") or {} if isinstance(state.get("extra"), dict) else {}
    saved = int(user.get("world_size", 1))
    if saved != job.size:
        raise CommandError(f"--resume {args.resume}: the checkpoint was written by {saved} process(es) and this "
                           f"run has {job.size}; resume with the same number (mpiexec -n {saved}) since the data "
                           f"shards and the scaled learning rate depend on it")


def reseed_after_resume(job, args, start_epoch):
    """The checkpoint restored rank 0's random stream on every rank: give each its own again."""
    if job.comm is not None:
        from .. import random as grandom
        grandom.manual_seed([args.seed, job.rank, start_epoch])


def train_sampler(job, n, seed, start_epoch):
    """This rank's shard of the training set (None in a plain run: the loader shuffles)."""
    if job.comm is None:
        return None
    from ..distributed import DistributedSampler
    sampler = DistributedSampler(n, job.size, job.rank, shuffle=True, seed=seed)
    sampler.set_epoch(start_epoch)
    return sampler
