"""The float32 convolution precision policy (PyTorch's names).

    gpucnn.set_float32_conv_precision("highest" | "high" | "medium")
    gpucnn.get_float32_conv_precision()            # "highest" by default
    with gpucnn.float32_conv_precision("high"): ...
    gpucnn.functional.conv2d(x, w, precision="medium")   # per call, wins over both

What each mode permits for float32 arrays (the policy permits lower
precision; a device may always compute more precisely than asked):
    highest  float32 results within 1e-5 relative L2 of the float64 reference
             (SIMT FP32 kernels, or 3xTF32: each operand split into a TF32 high
             and low part, three tensor-core products)
    high     TF32 tensor cores, one pass (10-bit operand mantissa, FP32 accumulation)
    medium   BF16 operands (7-bit mantissa), FP32 accumulation
The CPU path computes every mode in float32 (as PyTorch's CPU path ignores
TF32), and float64 arrays always run the float64 kernels; so the policy only
changes GPU results of float32 and float16 convolutions.

Scope. set_float32_conv_precision changes the process-wide default, seen by
every thread. The context manager overrides it in the current thread (a
contextvars.ContextVar, so asyncio tasks are isolated too) and restores the
previous value on exit, also on an exception; blocks nest. A
set_float32_conv_precision inside such a block changes the block's value only
(it ends with the block), so that set-then-get always round-trips.
"""
import contextlib
import contextvars
import threading

PRECISIONS = ("highest", "high", "medium")
DEFAULT = "highest"

# Documented error bound of each mode for float32 convolutions: relative L2
# error against the float64 reference, inputs ~N(0, 1). An operand rounded to
# p mantissa bits has relative error <= u = 2**-(p+1), a product <= 2u, and
# independent rounding errors of the terms of a sum leave a relative L2
# error of about u; the bounds are 2u (measured in the emulator, CPU-side:
# docs/precision.md). float16 inputs/outputs: FLOAT16_TOLERANCE.
TOLERANCE = {
    "highest": 1e-5,   # docs/precision.md; 3xTF32 drops lo*lo, ~u_tf32**2 = 2.4e-7
    "high": 1e-3,      # TF32: u = 2**-11 = 4.9e-4
    "medium": 8e-3,    # BF16: u = 2**-8 = 3.9e-3
}
FLOAT16_TOLERANCE = 1e-3   # the float16 result's own rounding, u = 2**-11

_lock = threading.Lock()
_process_default = DEFAULT
# None: no block active in this context -> the process-wide default.
_override = contextvars.ContextVar("gpucnn_float32_conv_precision", default=None)


def check(precision, what="float32 conv precision"):
    """`precision` if it is one of PRECISIONS, else a ValueError naming them."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        allowed = ", ".join(repr(p) for p in PRECISIONS)
        raise ValueError(f"{what} must be one of {allowed}; got {precision!r}")
    return precision


def set_float32_conv_precision(precision):
    """Set the precision float32 convolutions may use ("highest", "high", "medium")."""
    global _process_default
    check(precision)
    if _override.get() is not None:
        _override.set(precision)
        return
    with _lock:
        _process_default = precision


def get_float32_conv_precision():
    """The precision in force here: the innermost float32_conv_precision block's
    value, else the process-wide default ("highest" unless set)."""
    value = _override.get()
    return _process_default if value is None else value


@contextlib.contextmanager
def float32_conv_precision(precision):
    """Context manager: float32 convolutions in this thread/context use `precision`
    inside the block; the previous value is restored on exit."""
    token = _override.set(check(precision))
    try:
        yield precision
    finally:
        _override.reset(token)


def resolve(precision=None, op="conv"):
    """The precision one call runs with: the per-call keyword if given, else the policy."""
    if precision is None:
        return get_float32_conv_precision()
    return check(precision, f"{op}: precision")
