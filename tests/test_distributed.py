"""gpucnn.distributed: the sampler (pure Python), the size-1 world, and
N-process runs under mpiexec (tests/distributed_worker.py holds the checks
that run inside the processes; a failed check aborts that job)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpucnn import distributed, nn
from gpucnn.distributed import DistributedSampler

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")


def _mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _skip_reason():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install .[mpi])"
    return "" if _mpiexec() else "no mpiexec on PATH or beside the Python executable (pip install .[mpi])"


needs_mpi = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "mpi available")


def mpirun(n, *args, timeout=120):
    """Run `python ARGS` in n processes -> (CompletedProcess, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run([_mpiexec(), "-n", str(n), sys.executable, *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


# ---- the sampler (no MPI) ---------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 10, 24, 101])
@pytest.mark.parametrize("replicas", [1, 2, 3, 5])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_sampler_shards_disjoint_and_covering(n, replicas, drop_last, shuffle):
    shards = []
    for rank in range(replicas):
        s = DistributedSampler(n, replicas, rank, shuffle=shuffle, seed=5, drop_last=drop_last)
        s.set_epoch(3)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
    sizes = {len(sh) for sh in shards}
    assert len(sizes) == 1   # every rank takes the same number of steps
    every = [i for sh in shards for i in sh]
    if drop_last:
        assert len(every) == len(set(every)) == (n // replicas) * replicas   # disjoint; only the tail cut
    else:
        assert set(every) == set(range(n))                                   # covering
        assert len(every) == -(-n // replicas) * replicas if n else len(every) == 0
        assert len(every) - len(set(every)) == len(every) - n                # repeats are the padding only


def test_sampler_epochs_and_seed():
    a = DistributedSampler(50, 2, 0, seed=1)
    first = list(a)
    assert list(a) == first                     # one permutation per epoch
    a.set_epoch(1)
    assert list(a) != first
    b = DistributedSampler(50, 2, 0, seed=0)
    b.set_epoch(1)
    assert list(b) == list(DistributedSampler(50, 2, 0, seed=1))   # seed + epoch
    assert list(DistributedSampler(5, 2, 1, shuffle=False)) == [1, 3, 0]


def test_sampler_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        DistributedSampler(10, 2, 2)
    with pytest.raises(ValueError, match="n must be"):
        DistributedSampler(-1, 2, 0)


# ---- a world of one process -------------------------------------------------------
def test_plain_process_is_a_world_of_one():
    code = ("import sys, numpy as np; from gpucnn import distributed as d; w = d.init();"
            "a = np.ones(3); w.allreduce(a, op='mean'); w.barrier();"
            "print(w.backend, w.rank, w.size, w.local_rank, a.tolist(), 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MV2_"))}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["single", "0", "1", "0", "[1.0,", "1.0,", "1.0]", "False"]


def test_single_world_ddp_is_the_module():
    w = distributed.SingleCommunicator()
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).double()
    ddp = distributed.DistributedDataParallel(net, comm=w)
    x = np.random.default_rng(0).standard_normal((5, 4))
    y = ddp(x)
    assert np.array_equal(y, net(x))
    ddp.backward(np.ones_like(y))
    assert list(ddp.state_dict()) == list(net.state_dict())   # the inner module's keys
    with pytest.raises(ValueError, match="op must be"):
        w.allreduce(np.ones(2), op="max")
    with pytest.raises(ValueError, match="C-contiguous"):
        w.allreduce(np.ones((4, 4))[:, ::2])


def test_convert_sync_batchnorm_keeps_order_state_and_parameters():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4),
                        nn.BatchNorm1d(4))
    net[1].running_mean[:] = [1.0, 2.0]
    params = net.parameters()
    state = net.state_dict()
    out = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert out is net and [type(m).__name__ for m in net][1::4] == ["SyncBatchNorm", "SyncBatchNorm"]
    assert net.parameters() == params and list(net.state_dict()) == list(state)
    assert all(np.array_equal(state[k], v) for k, v in net.state_dict().items())
    lone = nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(3))
    assert isinstance(lone, nn.SyncBatchNorm)


def test_sync_batchnorm_in_a_world_of_one_is_batchnorm(rng):
    x = rng.standard_normal((4, 3, 5, 5))
    dy = rng.standard_normal(x.shape)
    bn, sync = nn.BatchNorm2d(3).double(), nn.SyncBatchNorm(3, comm=distributed.SingleCommunicator()).double()
    assert np.allclose(sync(x), bn(x), rtol=1e-12, atol=1e-12)
    assert np.allclose(sync.backward(dy), bn.backward(dy), rtol=1e-10, atol=1e-12)
    assert np.allclose(sync.running_var, bn.running_var, rtol=1e-12)
    assert np.allclose(sync.weight.grad, bn.weight.grad, rtol=1e-12)
    sync.eval()
    bn.eval()
    assert np.allclose(sync(x), bn(x), rtol=1e-12, atol=1e-12)


# ---- several processes --------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_processes_match_one_process_at_n_times_the_batch(n):
    done, _ = mpirun(n, WORKER, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"distributed checks passed: {n} processes" in done.stdout


@needs_mpi
def test_a_failing_rank_ends_the_job():
    done, seconds = mpirun(2, WORKER, "raise", timeout=90)
    assert done.returncode != 0 and seconds < 60
    assert "rank 1 of 2 failed: RuntimeError: deliberate failure on rank 1" in done.stderr


@needs_mpi
def test_a_collective_timeout_aborts_the_job():
    done, seconds = mpirun(2, WORKER, "timeout", timeout=200)
    assert done.returncode != 0 and seconds < 150   # the idle rank would sleep 600 s (start-up is slow under load)
    assert "rank 0 of 2: all-reduce of 3 float64 values waited more than 2 s" in done.stderr


# ---- the train command ------------------------------------------------------------------
TRAIN = ["train", "--dataset", "digits", "--subset", "160", "--model", "lenet5", "--epochs", "1",
         "--batch-size", "16", "--no-progress"]


@needs_mpi
def test_cli_under_mpiexec_writes_one_metrics_file_and_refuses_another_world_size(tmp_path, capsys):
    out = tmp_path / "out"
    done, _ = mpirun(2, "-m", "gpucnn", *TRAIN, "--distributed", "--sync-bn", "--scale-lr", "linear",
                     "--metrics-out", out / "m.json", "--checkpoint", out / "c.npz", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["c.npz", "m.json"]      # rank 0 alone writes
    assert done.stdout.count("test accuracy") == 1                           # and prints
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 32
    assert metrics["settings"]["lr"] == pytest.approx(2 * 0.001) and metrics["settings"]["warmup"] == 5
    done, _ = mpirun(2, "-m", "gpucnn", *TRAIN, "--epochs", "2", "--distributed", "--sync-bn", "--scale-lr",
                     "linear", "--metrics-out", out / "m2.json", "--resume", out / "c.npz", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr                   # the same N resumes
    assert [r["epoch"] for r in json.loads((out / "m2.json").read_text())["epochs"]] == [1, 2]
    from gpucnn import cli
    assert cli.main(TRAIN + ["--epochs", "2", "--resume", str(out / "c.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpucnn train: error: --resume") and "written by 2 process(es)" in err
    assert "\n" not in err


def test_cli_distributed_without_mpi4py_says_what_to_install(monkeypatch, capsys):
    from gpucnn import cli
    from gpucnn.commands import train_distributed
    monkeypatch.setattr(train_distributed, "mpi4py_missing", lambda: "mpi4py is not installed: pip install x")
    assert cli.main(TRAIN + ["--distributed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gpucnn train: error: --distributed needs mpi4py: mpi4py is not installed: pip install x"
    assert cli.main(TRAIN + ["--sync-bn"]) == 2
    assert "need --distributed" in capsys.readouterr().err


def test_sync_batchnorm_float16_keeps_statistics_in_wide_precision(rng):
    # per-channel sums of 8*16*16 values around 32 exceed float16's range (65504)
    x = (rng.random((8, 3, 16, 16)) * 64).astype(np.float16)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    sync = nn.SyncBatchNorm(3, comm=distributed.SingleCommunicator(), dtype=np.float16)
    ref = nn.BatchNorm2d(3).double()
    y, y_ref = sync(x), ref(x.astype(np.float64))
    assert y.dtype == np.float16 and np.allclose(y, y_ref, atol=2e-2)
    dx, dx_ref = sync.backward(dy), ref.backward(dy.astype(np.float64))
    assert dx.dtype == np.float16 and np.allclose(dx, dx_ref, atol=2e-2)
    assert np.allclose(sync.running_mean, ref.running_mean, rtol=1e-3)
