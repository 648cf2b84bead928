"""Time the conv and pool kernels against our CPU path, PyTorch and the machine's ceilings.

`gpucnn bench` prints a table and writes JSON, markdown and a plot; --compare
shows two saved runs side by side. See bench/README.md.

    gpucnn bench --suite quick --json out/bench.json --markdown out/bench.md --plot out/bench.png
    gpucnn bench --compare A.json B.json
    gpucnn bench --device cpu --e2e only --e2e-model lenet_bn vgg_small --profile --sweep-threads 1,2 \
        --json out/sweep.json --markdown out/sweep.md --plot out/sweep.png
"""
import argparse
import json
import sys
from pathlib import Path

from ..commands.errors import CommandError, positive_int
from ..models import DEFAULT_MODEL, MODELS
from . import report, step_modes, sweep
from .env import cpu_threads, import_torch
from .ops import OPS
from .profile_step import profile_text, profile_step
from .runner import Runner
from .schema import validate
from .suites import SUITES, get_suite


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="time the conv/pool kernels against references",
                              description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=SUITES, default="quick",
                   help="shape suite (quick: CPU/CI in seconds; full: every suite, for a GPU)")
    p.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS), metavar="OP",
                   help=f"ops to time (default all): {', '.join(OPS)}")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed calls per measurement (default 5 on the CPU, 50 on the GPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls first (default 2 on the CPU, 10 on the GPU)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto = the GPU when CuPy finds a usable one, else the CPU")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for Numba, the BLAS and PyTorch alike (default: Numba's count)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop a measurement after this many timed seconds, at least one call (default: no limit)")
    p.add_argument("--precision", nargs="+", choices=("highest", "high", "medium"), default=["highest"],
                   metavar="P", help="conv precisions to time on the GPU: highest, high (TF32), medium "
                   "(BF16); each GPU result records its \"precision\" (default: highest)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparisons")
    p.add_argument("--no-cpu-baseline", action="store_true",
                   help="GPU runs: do not time (or check against) our CPU path, nor the CPU --e2e steps")
    p.add_argument("--e2e", choices=("off", "on", "only"), default="off",
                   help="also (or only) time a training step of the default model")
    p.add_argument("--e2e-batch", type=positive_int, nargs="+", default=[128], metavar="N",
                   help="batch sizes of the --e2e training step, each timed (default 128)")
    p.add_argument("--e2e-precision", nargs="+", default=["fp32"], metavar="P",
                   help=f"precisions of the --e2e step: {', '.join(step_modes.PRECISIONS)} (ours: gpucnn.amp; "
                   "PyTorch: torch.autocast) (default fp32)")
    p.add_argument("--e2e-mode", nargs="+", default=list(step_modes.MODES), metavar="MODE",
                   help="GPU step modes of the --e2e step (docs/gpu-step.md): eager, deferred, graph (ours), "
                   "eager, graph, compile (PyTorch's); a mode one side lacks is not run for it "
                   f"(default: all of {', '.join(step_modes.MODES)}; the CPU steps are eager)")
    p.add_argument("--e2e-steps", type=positive_int, default=20,
                   help="steps per timed run of a GPU --e2e variant (default 20)")
    p.add_argument("--e2e-epoch", type=positive_int, nargs="?", const=0, default=None, metavar="IMAGES",
                   help="with --e2e: also images/s of one whole training epoch over the real data "
                   "(Fashion-MNIST, else the digits), ours and PyTorch's (gpucnn.benchmark.epoch); "
                   "IMAGES: only the first that many training images (default: off; given alone: all)")
    p.add_argument("--e2e-data-dir", metavar="DIR", default=None,
                   help="Fashion-MNIST IDX files for --e2e-epoch (default: /usr/share/datasets/fashion-mnist, "
                   "else the digits)")
    p.add_argument("--e2e-model", nargs="+", choices=MODELS, default=[DEFAULT_MODEL], metavar="MODEL",
                   help=f"models of the --e2e training step (default {DEFAULT_MODEL}): {', '.join(MODELS)}")
    p.add_argument("--profile", action="store_true",
                   help="with --e2e on the CPU: also a per-phase, per-layer profile of each model's step, "
                   "ours and PyTorch's (gpucnn.benchmark.profile_step)")
    p.add_argument("--sweep-threads", type=_thread_list, default=None, metavar="N,N,...",
                   help="run everything once per CPU thread count (e.g. 1,2) and report how each step and "
                   "op scales; --json/--markdown/--plot then write the sweep (gpucnn.benchmark.sweep) "
                   "(default: one run at --threads)")
    p.add_argument("--json", metavar="FILE", help="write the run as JSON, schema gpucnn.benchmark.schema (default: not written)")
    p.add_argument("--markdown", metavar="FILE", help="write a markdown report (default: not written)")
    p.add_argument("--plot", metavar="FILE", help="write a PNG bar chart of the time ratios (default: not written)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="show two saved runs side by side instead of running (default: run)")
    p.set_defaults(func=run)
    return p


def _thread_list(text):
    """'1,2,4' -> [1, 2, 4] (argparse type)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2,4, got {text!r}")
    return values


def _write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _check_choices(args):
    """--e2e-precision / --e2e-mode values: a clear usage error (exit 2) naming the choices."""
    for option, values, allowed in (("--e2e-precision", args.e2e_precision, step_modes.PRECISIONS),
                                    ("--e2e-mode", args.e2e_mode, step_modes.MODES)):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise CommandError(f"{option}: unknown value(s) {', '.join(map(repr, bad))}; "
                               f"choose from {', '.join(allowed)}")


def run(args):
    _check_choices(args)
    if args.compare:
        a, b = (report.load(p) for p in args.compare)
        print(report.compare_report(a, b, names=args.compare))
        if args.markdown:
            _write(args.markdown, report.compare_report(a, b, names=args.compare, markdown=True))
        return 0
    if args.sweep_threads:
        if args.device == "gpu":
            raise CommandError("--sweep-threads times the CPU; use --device cpu (or auto without a GPU)")
        docs = [_one_run(args, n) for n in args.sweep_threads]
        for doc in docs:
            _check(doc)
        result = sweep.sweep_document(args.sweep_threads, docs)
        print(sweep.sweep_text(result))
        for doc in docs:
            for prof in doc.get("profile") or []:
                print(profile_text(prof))
        if args.json:
            _write(args.json, json.dumps(result, indent=1) + "\n")
        if args.markdown:
            _write(args.markdown, sweep.sweep_text(result, markdown=True) + _profiles_markdown(docs))
        if args.plot:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            sweep.plot_sweep(result, args.plot)
        return 1 if any(_failed(d) for d in docs) else 0
    doc = _one_run(args, args.threads)
    _check(doc)
    print(report.text_report(doc))
    for prof in doc.get("profile") or []:
        print(profile_text(prof))
    if args.json:
        _write(args.json, json.dumps(doc, indent=1) + "\n")
    if args.markdown:
        _write(args.markdown, report.markdown_report(doc) + _profiles_markdown([doc]))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        report.plot_ratios(doc, args.plot)
    return 1 if _failed(doc) else 0


def _profiles_markdown(docs):
    texts = [f"\n## Step profile, {d['settings']['threads']} thread(s)\n\n```\n{profile_text(p)}\n```\n"
             for d in docs for p in d.get("profile") or []]
    return "".join(texts)


def _one_run(args, threads):
    """One benchmark document at `threads` CPU threads (None: the default)."""
    try:
        runner = Runner(device=args.device, repeats=args.repeats, warmup=args.warmup, threads=threads,
                        use_torch=not args.no_torch, cpu_baseline=not args.no_cpu_baseline,
                        max_seconds=args.max_seconds, log=_log, precisions=args.precision)
    except RuntimeError as exc:  # --device gpu without a usable GPU
        raise CommandError(f"{exc}; use --device cpu (or auto)") from None
    only_e2e = args.e2e == "only"
    doc = runner.run([] if only_e2e else get_suite(args.suite), args.ops,
                     suite="e2e" if only_e2e else args.suite, small_ceilings=only_e2e or args.suite == "quick")
    if args.e2e != "off":
        from .e2e import run_e2e
        torch = import_torch()[0] if not args.no_torch else None
        with cpu_threads(runner.threads, torch):
            doc["e2e_models"] = [run_e2e(model, batch=batch, log=_log, use_torch=not args.no_torch,
                                         repeats=runner.repeats if runner.device == "cpu"
                                         else min(runner.repeats, 20), warmup=runner.warmup,
                                         precisions=args.e2e_precision, modes=args.e2e_mode,
                                         gpu_steps=args.e2e_steps,
                                         cpu_steps=not (args.no_cpu_baseline and runner.device == "gpu"))
                                 for model in args.e2e_model for batch in args.e2e_batch]
            doc["e2e"] = doc["e2e_models"][0]
            if args.e2e_epoch is not None:
                from .epoch import run_epochs
                doc["e2e_epoch"] = [run_epochs(model, batch, torch=torch, images=args.e2e_epoch or None,
                                               data_dir=args.e2e_data_dir, log=_log)
                                    for model in args.e2e_model for batch in args.e2e_batch]
            if args.profile and runner.device == "cpu":
                doc["profile"] = [profile_step(model, batch=args.e2e_batch[0], torch=torch,
                                               repeats=max(3, runner.repeats), warmup=runner.warmup)
                                  for model in args.e2e_model]
    return doc


def _check(doc):
    errors = validate(doc)
    if errors:  # a bug in the runner, not in the user's input: say so loudly, keep the data
        _log("warning: the benchmark document does not match its schema:\n  " + "\n  ".join(errors[:20]))


def _failed(doc):
    if doc["summary"]["failed_checks"] or doc["summary"].get("crashed"):
        _log("gpucnn bench: error: a kernel version failed its check or crashed (listed above)")
        return True
    return False
