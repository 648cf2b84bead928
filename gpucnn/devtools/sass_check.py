"""Static speed check of the compiled kernels: the SASS instruction mix of
each kernel's main loop (python -m gpucnn.devtools.kernel_check --sass).

cuobjdump --dump-sass on the cubins kernel_check builds with nvcc. The main
loop of a kernel is the loop (a backward branch and its target) holding the
most math instructions (HMMA/IMMA tensor-core, FFMA/FMUL/FADD/DFMA); each
row reports that loop's length and its counts per class:
    mma    HMMA, IMMA, HGMMA (tensor cores)
    fma    FFMA, FMUL, FADD, DFMA, DMUL, DADD (SIMT float math)
    int    integer and address arithmetic (IMAD, IADD3, LEA, SHF, LOP3, ISETP, SEL, ...)
    lds    shared-memory loads/stores (LDS, LDSM, STS)
    ldg    global loads and async copies (LDG, LDGSTS, LDGDEPBAR, DEPBAR)
    other  the rest (moves, conversions, branches, barriers)
and math_share = (mma + fma) / all. A high int share is index math the
hardware must issue beside the math; cuobjdump needs no GPU. A further
column, div, counts the integer-division signatures inside the loop (not a
class of its own: they are also counted above): I2F.*.RP, the reciprocal
setup of nvcc's inline 32-bit division, and a CALL out of the loop, its
out-of-line 64-bit division (a CALL into the loop or to the instruction
just after it is control flow, not a division); 0 means no integer division in the main loop.

cuobjdump comes with the CUDA toolkit, or with PyPI's nvidia-cuda-cuobjdump
wheel (installed under site-packages/nvidia/<cu13 or cuda_cuobjdump>/bin).
"""
import re
import shutil
import subprocess
from pathlib import Path

_FUNCTION = re.compile(r"^\s*Function : (\S+)")
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_BRANCH_TARGET = re.compile(r"0x([0-9a-f]+)")

CLASSES = {
    "mma": ("HMMA", "IMMA", "HGMMA", "DMMA"),
    "fma": ("FFMA", "FMUL", "FADD", "DFMA", "DMUL", "DADD", "FFMA2", "FMNMX"),
    "int": ("IMAD", "IADD3", "IADD", "LEA", "SHF", "LOP3", "ISETP", "SEL", "IMNMX", "IABS", "SHL", "SHR",
            "IMUL", "ISCADD", "LOP", "PRMT", "UIMAD", "UIADD3", "ULEA", "USHF", "ULOP3", "UISETP", "USEL",
            "VIADD", "VIMNMX", "UMOV", "IMAD.WIDE", "I2F", "F2I"),
    "lds": ("LDS", "LDSM", "STS"),
    "ldg": ("LDG", "LDGSTS", "LDGDEPBAR", "DEPBAR", "STG", "LDC"),
}


def find_cuobjdump():
    """cuobjdump on PATH, else from an nvidia-* wheel beside this Python, else None."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in map(Path, nvidia.__path__):
        for candidate in sorted(root.glob("*/bin/cuobjdump")):
            return str(candidate)
    return None


def dump_sass(cubin, cuobjdump):
    proc = subprocess.run([cuobjdump, "--dump-sass", str(cubin)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"cuobjdump failed on {cubin}: {proc.stderr.strip()}")
    return proc.stdout


def parse_sass(text):
    """{kernel: [(address, opcode, operands)]} from cuobjdump --dump-sass output."""
    kernels, current = {}, None
    for line in text.splitlines():
        m = _FUNCTION.match(line)
        if m:
            current = kernels.setdefault(m.group(1), [])
            continue
        m = _INSTR.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(3), m.group(4)))
    return kernels


def classify(opcode):
    base = opcode.split(".")[0]
    for name, prefixes in CLASSES.items():
        if base in prefixes:
            return name
    return "other"


def main_loop(instrs):
    """(start, end) addresses of the loop holding the most math, or None."""
    best, best_key = None, None
    for addr, op, operands in instrs:
        if op.split(".")[0] != "BRA":
            continue
        m = _BRANCH_TARGET.search(operands)
        if not m or int(m.group(1), 16) >= addr:
            continue
        start = int(m.group(1), 16)
        body = [o for a, o, _ in instrs if start <= a <= addr]
        math = sum(classify(o) in ("mma", "fma") for o in body)
        key = (math, -len(body))
        if math and (best_key is None or key > best_key):
            best, best_key = (start, addr), key
    return best


def is_division(opcode, target_outside=True):
    """An integer-division signature: I2F ... .RP (inline 32-bit), or a CALL
    whose target lies outside the loop (the 64-bit division routine)."""
    parts = opcode.split(".")
    return (parts[0] == "I2F" and "RP" in parts[1:]) or (parts[0] == "CALL" and target_outside)


def loop_mix(instrs):
    """The main loop's instruction counts per class, its length, math share
    and integer-division signatures (div)."""
    loop = main_loop(instrs)
    if loop is None:
        return {"loop": None, "instructions": 0, "math_share": None, "div": 0,
                **{c: 0 for c in (*CLASSES, "other")}}
    inside = [(a, o, operands) for a, o, operands in instrs if loop[0] <= a <= loop[1]]
    body = [o for _, o, _ in inside]
    counts = {c: 0 for c in (*CLASSES, "other")}
    for op in body:
        counts[classify(op)] += 1

    def outside(operands):
        m = _BRANCH_TARGET.search(operands)
        return not (m and loop[0] <= int(m.group(1), 16) <= loop[1] + 0x10)   # + the loop's exit
    return {"loop": f"{loop[0]:#x}-{loop[1]:#x}", "instructions": len(body),
            "math_share": round((counts["mma"] + counts["fma"]) / len(body), 3),
            "div": sum(is_division(o, outside(operands)) for _, o, operands in inside), **counts}


def format_table(rows):
    head = ("arch", "file", "scalar", "kernel", "regs", "smem", "spill", "loop", "n", "mma", "fma", "int",
            "lds", "ldg", "other", "math%", "div")
    body = [(r["arch"], r["file"], r["scalar"], r["kernel"], r["registers"], r["smem"],
             (r["spill_stores"] or 0) + (r["spill_loads"] or 0), r["loop"], r["instructions"], r["mma"], r["fma"],
             r["int"], r["lds"], r["ldg"], r["other"],
             "-" if r["math_share"] is None else f"{100 * r['math_share']:.0f}", r.get("div", "-")) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [head, *body])
