"""Time a data-parallel training step at 1, 2, 3, ... processes (CPU, MPI backend).

    python bench/distributed_step.py --sweep 1 2 3 --out bench/results/distributed-cpu-vm-DATE
    mpiexec -n 2 python bench/distributed_step.py           # one world size, JSON on stdout

Each process trains a replica of --model (default lenet_bn, 28x28 inputs,
--batch-size images per process, SGD with momentum) on synthetic data through
DistributedDataParallel. Per step (medians over --steps after --warmup):
- step: forward, loss, backward (with the overlapped bucket all-reduces) and
  the optimizer step, between two barriers, the slowest rank's time;
- exposed communication: time this rank spent starting all-reduces and
  waiting for them after its backward (what the overlap did not hide);
- all-reduce alone: one blocking all-reduce of the same bytes, for the raw cost;
- bytes: gradient bytes each rank all-reduces per step.
--sweep relaunches this script under mpiexec for each size with one Numba and
one BLAS thread per process (so that 1, 2 and 3 processes use 1, 2 and 3
threads), and writes OUT.json and OUT.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def measure(args):
    sys.path.insert(0, str(ROOT))
    from gpucnn import distributed, models, nn, optim
    from gpucnn import random as grandom
    comm = distributed.init()
    grandom.manual_seed(0)
    model = distributed.DistributedDataParallel(models.build(args.model, 1, 10, 28), bucket_cap_mb=args.bucket_cap_mb)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal((args.batch_size, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, args.batch_size)

    exposed = [0.0]
    nbytes = [0]
    start_allreduce = comm.iallreduce

    def timed_iallreduce(a):   # counts the time to start each bucket and to wait for it
        t = time.perf_counter()
        work = start_allreduce(a)
        exposed[0] += time.perf_counter() - t
        nbytes[0] += a.nbytes
        wait = work.wait

        def timed_wait():
            t = time.perf_counter()
            wait()
            exposed[0] += time.perf_counter() - t
        work.wait = timed_wait
        return work
    comm.iallreduce = timed_iallreduce

    steps, comms = [], []
    for i in range(args.warmup + args.steps):
        exposed[0], nbytes[0] = 0.0, 0
        comm.barrier()
        t = time.perf_counter()
        opt.zero_grad()
        _, d = loss_fn(model(x), y)
        model.backward(d)
        opt.step()
        slowest = comm.allgather(np.array([time.perf_counter() - t])).max()
        if i >= args.warmup:
            steps.append(slowest)
            comms.append(exposed[0])
    comm.iallreduce = start_allreduce
    flat = np.zeros(nbytes[0] // 4, np.float32)
    alone = []
    for i in range(args.warmup + args.steps):
        comm.barrier()
        t = time.perf_counter()
        comm.allreduce(flat)
        alone.append(time.perf_counter() - t)
    result = {"world_size": comm.size, "backend": comm.backend, "model": args.model,
              "batch_per_process": args.batch_size, "steps": args.steps,
              "parameters": sum(p.size for p in model.parameters()), "bucket_cap_mb": args.bucket_cap_mb,
              "gradient_bytes": sum(p.data.nbytes for p in model.parameters()),
              "allreduce_bytes_per_step": int(nbytes[0]),
              "buckets": len(model._buckets or ()),
              "step_seconds_median": float(np.median(steps)),
              "exposed_comm_seconds_median": float(np.median(comms)),
              "allreduce_alone_seconds_median": float(np.median(alone[args.warmup:])),
              "images_per_second": comm.size * args.batch_size / float(np.median(steps))}
    result["exposed_comm_share"] = result["exposed_comm_seconds_median"] / result["step_seconds_median"]
    if comm.rank == 0:
        print(json.dumps(result))


def sweep(args):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    rows = []
    for n in args.sweep:
        cmd = [str(mpiexec), "-n", str(n), sys.executable, __file__, "--model", args.model,
               "--batch-size", str(args.batch_size), "--bucket-cap-mb", str(args.bucket_cap_mb),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=900)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    load = os.getloadavg()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "load_average_1_5_15_after": load,
            "note": "shared 2-core VM: other jobs ran at the same time, so the numbers are noisy; "
                    "1 Numba/BLAS thread per process; MPICH (mpich wheel) over shared memory"}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    base = rows[0]["step_seconds_median"]
    lines = [f"# Data-parallel step, {args.model}, batch {args.batch_size} per process, bucket cap "
             f"{args.bucket_cap_mb:g} MB, CPU ({meta['date']})", "",
             meta["note"] + f"; load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.", "",
             "| processes | step ms | images/s (all) | all-reduce bytes/step | buckets | exposed comm ms | share "
             "| all-reduce alone ms | step vs 1 process |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['world_size']} | {1e3 * r['step_seconds_median']:.1f} | {r['images_per_second']:.0f} | "
                     f"{r['allreduce_bytes_per_step']:,} | {r['buckets']} | "
                     f"{1e3 * r['exposed_comm_seconds_median']:.2f} | {100 * r['exposed_comm_share']:.1f}% | "
                     f"{1e3 * r['allreduce_alone_seconds_median']:.2f} | {r['step_seconds_median'] / base:.2f}x |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet_bn")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bucket-cap-mb", type=float, default=25)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--sweep", type=int, nargs="*", help="world sizes to run under mpiexec")
    p.add_argument("--out", default="distributed-step", help="output prefix for --sweep (.json, .md)")
    args = p.parse_args()
    sweep(args) if args.sweep else measure(args)


if __name__ == "__main__":
    main()
