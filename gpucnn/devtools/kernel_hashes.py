"""Which GPU code was verified on a GPU, by content hash, so "verified" cannot go stale.

The record bench/results/verified_kernels.json holds one entry per kernel
source (kernels/*.cu, kernels/*.cuh) and per fused formula (each formula tuple
of gpucnn/fused_gpu.py, hashed together with the source of the functions that
launch it, since those compute its constants):

    "kernels/pool2d.cu": {"sha256": <hash now>, "verified_sha256": <hash the GPU check passed on>,
                          "verified_by": <results folder>, "verified_commit": <commit>, "status": ...}

A status is one of
    "verified on <GPU>"                             the current hash is the verified one,
    "changed since its last GPU run"                verified once, changed since (a .cu also
                                                    counts as changed when a header it includes did),
    "compiled and emulated, not yet run on a GPU"   never run on a GPU (verified_sha256 null).
tests/test_kernel_hashes.py checks the record against the sources and the
README's "Status of the GPU kernels" table (each row names its sources in
backticks; its status cell must contain each source's status).

    python -m gpucnn.devtools.kernel_hashes              # check; prints what to update
    python -m gpucnn.devtools.kernel_hashes --update     # refresh hashes and statuses, add new sources
    python -m gpucnn.devtools.kernel_hashes --verified-by bench/results/<folder> --gpu "an H200"
        # after a passing GPU check of the current sources: they become "verified on an H200"
"""
import argparse
import ast
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the repository (gpucnn/devtools/../..)
RECORD = Path("bench/results/verified_kernels.json")
README = Path("README.md")
FUSED = Path("gpucnn/fused_gpu.py")
VERIFIED_PREFIX = "verified on "
CHANGED = "changed since its last GPU run"
NOT_RUN = "compiled and emulated, not yet run on a GPU"
TABLE_HEADING = "## Status of the GPU kernels"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _sha256(data):
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


def fused_formulas(source_text):
    """{name: sha256} of the formula tuples (module-level NAME = (str, ...)) of a
    fused_gpu.py text, each hashed with the source of the functions using it."""
    tree = ast.parse(source_text)
    formulas = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
                formulas[node.targets[0].id] = value
    functions = [f for f in tree.body if isinstance(f, ast.FunctionDef)]
    out = {}
    for name, value in formulas.items():
        # the functions using the formula, and those calling them (a launcher that
        # computes the constants and calls the one that launches: adam_step -> adam_step_with)
        names, users = {name}, []
        while True:
            more = [f for f in functions if f not in users
                    and any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(f))]
            if not more:
                break
            users += more
            names |= {f.name for f in more}
        users.sort(key=lambda f: f.lineno)
        out[name] = _sha256(json.dumps([list(value), [_code_of(source_text, f) for f in users]]))
    return out


def _code_of(text, function):
    """A function's statements as written, without its docstring and the comments
    between statements: editing those is no change to what runs."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return [function.name] + [ast.get_source_segment(text, stmt) for stmt in body]


def current_sources(root=ROOT):
    """{source key: (sha256, [keys of headers it includes])} for the GPU code in `root`."""
    root = Path(root)
    out = {}
    for path in sorted((root / "kernels").glob("*.cu*")):
        text = path.read_bytes()
        headers = [f"kernels/{h}" for h in _INCLUDE.findall(text.decode("utf-8", "replace"))]
        out[f"kernels/{path.name}"] = (_sha256(text), headers)
    if (root / FUSED).is_file():
        for name, digest in fused_formulas((root / FUSED).read_text()).items():
            out[f"{FUSED}:{name}"] = (digest, [])
    return out


def load_record(root=ROOT):
    path = Path(root) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {"sources": {}}


def expected_status(key, entry, sources, record):
    """The status the rules demand for `entry`: None when any 'verified on ...' is right."""
    if entry.get("verified_sha256") is None:
        return NOT_RUN
    changed = sources[key][0] != entry["verified_sha256"]
    for header in sources[key][1]:
        h = record["sources"].get(header)
        if h is not None and header in sources and sources[header][0] != h.get("verified_sha256"):
            changed = True
    return CHANGED if changed else None


def readme_rows(text):
    """[(sources named in backticks, status cell)] of the status table."""
    if TABLE_HEADING not in text:
        return []
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 2 and not set(cells[0]) <= {"-", " "}:
            rows.append((set(re.findall(r"`([^`]+)`", line)), cells[-1]))
    return rows


def check(root=ROOT):
    """Problems (strings, each saying what to update); [] when all is consistent."""
    root = Path(root)
    sources, record = current_sources(root), load_record(root)
    entries = record["sources"]
    fix = f"run `python -m gpucnn.devtools.kernel_hashes --update` and commit {RECORD}"
    problems = []
    for key in sources:
        if key not in entries:
            problems.append(f"{key} has no entry in {RECORD}; {fix} (a new source gets the status "
                            f"{NOT_RUN!r})")
    for key in entries:
        if key not in sources:
            problems.append(f"{RECORD} lists {key}, which no longer exists; {fix}")
    rows = readme_rows((root / README).read_text()) if (root / README).is_file() else []
    for key, entry in entries.items():
        if key not in sources:
            continue
        if entry.get("sha256") != sources[key][0]:
            problems.append(f"{key} changed (sha256 {sources[key][0][:12]}, recorded {str(entry.get('sha256'))[:12]})"
                            f"; {fix}")
        want, status = expected_status(key, entry, sources, record), entry.get("status", "")
        if want is not None and status != want:
            problems.append(f"{key}: status {status!r} in {RECORD} should be {want!r} (its verified hash "
                            f"{str(entry.get('verified_sha256'))[:12]} is not its current one, or a header "
                            f"it includes changed); {fix}")
        if want is None and not status.startswith(VERIFIED_PREFIX):
            problems.append(f"{key}: status {status!r} should start with {VERIFIED_PREFIX!r}; {fix}")
        if key.endswith(".cuh"):
            continue  # headers have no row of their own; the kernels that include them do
        name = key.split(":")[0]
        mine = [cell for names, cell in rows if name in names]
        if not mine:
            problems.append(f"README.md's table under {TABLE_HEADING!r} has no row naming `{name}`: add one "
                            f"with the status {status!r}")
        for cell in mine:
            if status and status not in cell:
                problems.append(f"README.md's table row naming `{name}` has the status {cell!r}; it must say "
                                f"{status!r} (from {RECORD})")
    return problems


def update(root=ROOT, verified_by=None, gpu=None, commit=None):
    """Refresh hashes and statuses (and, with verified_by, mark all current
    sources verified there); returns the new record."""
    root = Path(root)
    sources, record = current_sources(root), load_record(root)
    entries = {}
    for key, (digest, _) in sources.items():
        entry = dict(record["sources"].get(key) or {"verified_sha256": None, "verified_by": None,
                                                     "verified_commit": None})
        entry["sha256"] = digest
        if verified_by:
            entry.update(verified_sha256=digest, verified_by=str(verified_by), verified_commit=commit,
                         status=f"{VERIFIED_PREFIX}{gpu}")
        entries[key] = entry
    record["sources"] = entries
    for key, entry in entries.items():
        want = expected_status(key, entry, sources, record)
        if want is not None:
            entry["status"] = want
        elif not entry.get("status", "").startswith(VERIFIED_PREFIX):
            raise ValueError(f"{key}: matches its verified hash but has no 'verified on ...' status")
        entries[key] = {k: entry[k] for k in ("status", "sha256", "verified_sha256", "verified_by",
                                               "verified_commit")}
    (root / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gpucnn.devtools.kernel_hashes", description=__doc__.splitlines()[0])
    p.add_argument("--update", action="store_true", help="refresh hashes and statuses in the record")
    p.add_argument("--verified-by", metavar="FOLDER",
                   help="mark the current sources verified by the GPU results in FOLDER (implies --update)")
    p.add_argument("--gpu", default="a GPU", help="GPU name for the status, e.g. 'an H200' (default: a GPU)")
    p.add_argument("--commit", help="commit the GPU check ran on (default: none recorded)")
    args = p.parse_args(argv)
    if args.update or args.verified_by:
        update(verified_by=args.verified_by, gpu=args.gpu, commit=args.commit)
    problems = check()
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
