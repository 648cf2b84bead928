"""Faults with real processes (issue 15, item 4): SIGKILL at random moments and
in the middle of a checkpoint write, a full disk (RLIMIT_FSIZE), a non-finite
loss, and truncated or corrupt dataset files. Each real run trains lenet5 on a
tiny subset of the 8x8 digits (a process takes ~3-5 s, mostly imports)."""
import gzip
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpucnn import cli, serialization
from gpucnn.nn.loss import SoftmaxCrossEntropy

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--subset", "200", "--model", "lenet5", "--device", "cpu", "--no-progress",
        "--val-split", "0", "--seed", "3"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "GPUCNN_DEVICE": "cpu"}


def gpucnn(*args, preexec_fn=None, code=None):
    """A real `python -m gpucnn ...` (or `python -c code ...`) process, not waited for."""
    head = ["-c", code] if code else ["-m", "gpucnn"]
    return subprocess.Popen([sys.executable, *head, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        assert proc.poll() is None, f"process ended early: {finish(proc)}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode in (-signal.SIGKILL, 0)


def resume_finishes(ckpt, tmp_path, epochs):
    metrics = tmp_path / "resumed.json"
    rc, out, err = finish(gpucnn("train", *TINY, "--epochs", str(epochs), "--checkpoint", str(ckpt),
                                 "--resume", str(ckpt), "--metrics-out", str(metrics)))
    assert rc == 0, err
    assert [e["epoch"] for e in json.loads(metrics.read_text())["epochs"]] == list(range(1, epochs + 1))


def test_sigkill_at_a_random_moment_then_resume_finishes(tmp_path):
    ckpt = tmp_path / "model.ckpt.npz"
    delay = float(np.random.default_rng().uniform(0.0, 1.0))  # epochs take ~0.1-0.2 s here
    proc = gpucnn("train", *TINY, "--epochs", "12", "--checkpoint", str(ckpt))
    wait_for(ckpt, proc)
    time.sleep(delay)
    if proc.poll() is None:
        kill(proc)
    epoch = serialization.read_checkpoint(ckpt)["epoch"]  # whatever is under the name is whole
    assert 1 <= epoch <= 12, delay
    if epoch < 12:
        resume_finishes(ckpt, tmp_path, 12)


# Runs the CLI with the second checkpoint write stopping halfway (a marker file
# says so), to be SIGKILLed there: the rename of the atomic write never happens.
_HALF_WRITE = """
import io, sys, time
from gpucnn import cli, serialization
marker, calls, real = sys.argv[1], [], serialization._atomic_write
def stalling(path, write):
    calls.append(path)
    if len(calls) < 2:
        return real(path, write)
    def half(f):
        buf = io.BytesIO()
        write(buf)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        f.flush()
        open(marker, "w").close()
        time.sleep(120)
    return real(path, half)
serialization._atomic_write = stalling
sys.exit(cli.main(sys.argv[2:]))
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    ckpt, marker = tmp_path / "model.ckpt.npz", tmp_path / "half-written"
    proc = gpucnn(str(marker), "train", *TINY, "--epochs", "3", "--checkpoint", str(ckpt), code=_HALF_WRITE)
    wait_for(marker, proc)
    kill(proc)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.ckpt.npz.")  # the half-written temp file
    assert serialization.read_checkpoint(ckpt)["epoch"] == 1  # the name still holds epoch 1, whole
    resume_finishes(ckpt, tmp_path, 3)


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory):
    """A 1-epoch checkpoint, trained in this process. It also fills Numba's on-disk
    cache for this training, which the size-limited processes below then only
    read: Numba raises (a traceback, not our error) when it cannot write its cache."""
    path = tmp_path_factory.mktemp("warm") / "model.ckpt.npz"
    assert cli.main(["train", *TINY, "--epochs", "1", "--checkpoint", str(path)]) == 0
    return path


def _file_size_limit(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    return apply


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, one_epoch_checkpoint):
    ckpt = tmp_path / "model.ckpt.npz"
    before = one_epoch_checkpoint.read_bytes()
    ckpt.write_bytes(before)
    limit = len(before) // 4  # the next checkpoint cannot be written; small files (caches) still can
    rc, out, err = finish(gpucnn("train", *TINY, "--epochs", "2", "--checkpoint", str(ckpt), "--resume",
                                 str(ckpt), preexec_fn=_file_size_limit(limit)))
    assert rc == 1, err
    assert err.strip().splitlines()[-1] == (f"gpucnn train: error: cannot write the checkpoint {ckpt}: File too "
                                            f"large; the previous checkpoint (if any) is intact; free space or "
                                            f"choose another path")
    assert "Traceback" not in err
    assert ckpt.read_bytes() == before and serialization.read_checkpoint(ckpt)["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temp file was removed


def test_metrics_on_a_full_disk_keep_the_old_file(tmp_path, one_epoch_checkpoint):
    metrics = tmp_path / "m.json"
    metrics.write_text('{"old": true}')
    rc, out, err = finish(gpucnn("train", *TINY, "--epochs", "1", "--metrics-out", str(metrics),
                                 preexec_fn=_file_size_limit(200)))  # the metrics JSON is ~2 kB
    assert rc == 1 and f"cannot write the metrics file {metrics}: File too large" in err, err
    assert json.loads(metrics.read_text()) == {"old": True}


# ---- a non-finite loss ----------------------------------------------------------------------------
@pytest.fixture
def nan_at_call(monkeypatch):
    """Make the k-th training loss NaN (counting every loss call)."""
    def install(k):
        real, calls = SoftmaxCrossEntropy.__call__, []

        def loss(self, logits, target):
            calls.append(1)
            value, grad = real(self, logits, target)
            return (float("nan"), grad) if len(calls) == k else (value, grad)
        monkeypatch.setattr(SoftmaxCrossEntropy, "__call__", loss)
    return install


def test_nonfinite_loss_stops_naming_epoch_and_step(tmp_path, nan_at_call, capsys):
    ckpt = tmp_path / "model.ckpt.npz"
    nan_at_call(7 + 2)  # 200 images / batch 32 = 7 steps per epoch: epoch 2, step 2
    rc = cli.main(["train", *TINY, "--epochs", "3", "--batch-size", "32", "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip() == (f"gpucnn train: error: non-finite loss (nan) at epoch 2, step 2: training stopped; "
                           f"the last good checkpoint (epoch 1) is {ckpt}; lower --lr, or pass "
                           f"--skip-nonfinite to skip such batches")
    assert serialization.read_checkpoint(ckpt)["epoch"] == 1
    assert all(np.isfinite(v).all() for v in serialization.read_checkpoint(ckpt)["model"].values())


def test_skip_nonfinite_skips_and_counts(tmp_path, nan_at_call, capsys):
    metrics = tmp_path / "m.json"
    nan_at_call(3)
    rc = cli.main(["train", *TINY, "--epochs", "2", "--batch-size", "32", "--skip-nonfinite",
                   "--metrics-out", str(metrics)])
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert m["nonfinite_steps_skipped"] == 1 and all(np.isfinite(e["train_loss"]) for e in m["epochs"])
    assert "skipped 1 batch(es) with a non-finite loss" in capsys.readouterr().out
    prov = m["provenance"]
    assert prov["seed"] == 3 and prov["device"] == "cpu" and prov["command_line"].startswith("gpucnn train ")
    assert "--skip-nonfinite" in prov["command_line"]
    assert set(prov["versions"]) == {"gpucnn", "numpy", "numba", "cupy", "python"}
    assert prov["versions"]["numpy"] == np.__version__ and "commit" in prov


# ---- truncated or corrupt dataset files -------------------------------------------------------------
def _idx(array, magic):
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _write_idx_dir(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 256, (n, 8, 8), np.uint8), 0x803)))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 10, n, np.uint8), 0x801)))


def _dataset_error(capsys, *argv):
    rc = cli.main(["train", "--model", "lenet5", "--device", "cpu", "--epochs", "1", *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "epoch" not in out, err
    return err


def test_truncated_and_corrupt_idx_files(tmp_path, capsys):
    folder = tmp_path / "mnist"
    _write_idx_dir(folder)
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(folder), "--model", "lenet5",
                     "--device", "cpu", "--epochs", "1", "--val-split", "0", "--no-progress"]) == 0
    capsys.readouterr()
    images = folder / "train-images-idx3-ubyte.gz"
    whole = images.read_bytes()
    images.write_bytes(whole[:len(whole) // 2])
    err = _dataset_error(capsys, "--dataset", "mnist", "--data-dir", str(folder))
    assert f"{images}: corrupt or truncated gzip data" in err
    images.write_bytes(gzip.compress(gzip.decompress(whole)[:-5]))
    err = _dataset_error(capsys, "--dataset", "mnist", "--data-dir", str(folder))
    assert f"{images}: IDX payload truncated" in err
    images.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(whole)[4:]))
    err = _dataset_error(capsys, "--dataset", "mnist", "--data-dir", str(folder))
    assert f"{images}: wrong IDX magic number 0x00000801, expected 0x00000803" in err


def test_truncated_and_corrupt_cifar_batches(tmp_path, capsys):
    folder = tmp_path / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), np.uint8), b"labels": list(range(4))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    third = folder / "data_batch_3"
    whole = third.read_bytes()
    third.write_bytes(whole[:len(whole) // 2])
    err = _dataset_error(capsys, "--dataset", "cifar10", "--data-dir", str(folder))
    assert f"{third}: truncated CIFAR-10 python batch" in err
    third.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, protocol=2))
    err = _dataset_error(capsys, "--dataset", "cifar10", "--data-dir", str(folder))
    assert f"{third}: expected uint8 data of shape (N, 3072)" in err
    third.write_bytes(b"garbage that is no pickle")
    err = _dataset_error(capsys, "--dataset", "cifar10", "--data-dir", str(folder))
    assert f"{third}: not a CIFAR-10 python batch" in err


def test_truncated_and_foreign_npz(tmp_path, capsys):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((20, 1, 8, 8), np.float32), y=np.arange(20) % 10)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    err = _dataset_error(capsys, "--dataset", "npz", "--data-dir", str(path))
    assert f"{path}: truncated or corrupt .npz archive" in err
    np.save(tmp_path / "x.npy", np.zeros(3))
    err = _dataset_error(capsys, "--dataset", "npz", "--data-dir", str(tmp_path / "x.npy"))
    assert f"{tmp_path / 'x.npy'}: not an .npz archive (no zip header)" in err
    np.savez(path, images=np.zeros((2, 8, 8)))
    err = _dataset_error(capsys, "--dataset", "npz", "--data-dir", str(path))
    assert f"{path}: expected arrays 'x' and 'y', missing ['x', 'y']" in err
