"""Time the conv and pool kernels against our CPU path, PyTorch and the machine's ceilings.

`gpucnn bench` prints a table and writes JSON, markdown and a plot; --compare
shows two saved runs side by side. See bench/README.md.

    gpucnn bench --suite quick --json out/bench.json --markdown out/bench.md --plot out/bench.png
    gpucnn bench --compare A.json B.json
"""
import json
import sys
from pathlib import Path

from ..commands.errors import CommandError, positive_int
from . import report
from .env import cpu_threads, default_threads, import_torch
from .ops import OPS
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
                   help="GPU runs: do not time (or check against) our CPU path")
    p.add_argument("--e2e", choices=("off", "on", "only"), default="off",
                   help="also (or only) time a training step of the default model")
    p.add_argument("--e2e-batch", type=positive_int, default=128, help="batch size of the --e2e training step")
    p.add_argument("--json", metavar="FILE", help="write the run as JSON, schema gpucnn.benchmark.schema (default: not written)")
    p.add_argument("--markdown", metavar="FILE", help="write a markdown report (default: not written)")
    p.add_argument("--plot", metavar="FILE", help="write a PNG bar chart of the time ratios (default: not written)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="show two saved runs side by side instead of running (default: run)")
    p.set_defaults(func=run)
    return p


def _write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(args):
    if args.compare:
        a, b = (report.load(p) for p in args.compare)
        print(report.compare_report(a, b, names=args.compare))
        if args.markdown:
            _write(args.markdown, report.compare_report(a, b, names=args.compare, markdown=True))
        return 0
    try:
        runner = Runner(device=args.device, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
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
        with cpu_threads(args.threads or default_threads(), torch):
            doc["e2e"] = run_e2e(batch=args.e2e_batch, repeats=runner.repeats if runner.device == "cpu"
                                 else min(runner.repeats, 20), warmup=runner.warmup,
                                 use_torch=not args.no_torch, log=_log)
    errors = validate(doc)
    if errors:  # a bug in the runner, not in the user's input: say so loudly, keep the data
        _log("warning: the benchmark document does not match its schema:\n  " + "\n  ".join(errors[:20]))
    print(report.text_report(doc))
    if args.json:
        _write(args.json, json.dumps(doc, indent=1) + "\n")
    if args.markdown:
        _write(args.markdown, report.markdown_report(doc))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        report.plot_ratios(doc, args.plot)
    if doc["summary"]["failed_checks"] or doc["summary"].get("crashed"):
        _log("gpucnn bench: error: a kernel version failed its check or crashed (listed above)")
        return 1
    return 0
