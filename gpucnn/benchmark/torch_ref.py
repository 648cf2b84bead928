"""PyTorch adapters of the benchmark: the same op as ours, called through
torch.nn.functional or the aten kernels, on the same inputs and stream.
PyTorch is only an optional comparison, never a dependency."""
from .. import backend
from .ops import OPS


def torch_call(torch, op, case, t):
    """Zero-argument callable running PyTorch's op on the tensors in `t`.
    Pool backwards call the aten kernels directly (2-D and 3-D exist; 1-D is
    lifted to 2-D with unit height, as PyTorch itself does)."""
    aten, tf = torch.ops.aten, torch.nn.functional
    nd, s, p, k = case.nd, list(case.stride), list(case.padding), list(case.kernel)
    if op == "conv_forward":
        f = getattr(tf, f"conv{nd}d")
        return lambda: f(t["x"], t["w"], None, s, p, list(case.dil), case.groups)
    if op.startswith("conv_backward"):
        which = 0 if op == "conv_backward_data" else 1
        mask = [which == 0, which == 1, False]
        return lambda: aten.convolution_backward(t["dy"], t["x"], t["w"], None, s, p, list(case.dil),
                                                 False, [0] * nd, case.groups, mask)[which]
    if op == "max_pool_forward":
        f = getattr(tf, f"max_pool{nd}d")
        return lambda: f(t["x"], k, s, p, return_indices=True)
    if op == "avg_pool_forward":
        f = getattr(tf, f"avg_pool{nd}d")
        return lambda: f(t["x"], k, s, p, count_include_pad=True)
    x, dy = t["x"], t["dy"]
    if nd == 1:
        x, dy, k, s, p = x.unsqueeze(2), dy.unsqueeze(2), [1] + k, [1] + s, [0] + p
    d = len(k)
    if op == "max_pool_backward":
        idx = t["indices"].unsqueeze(2) if nd == 1 else t["indices"]
        f = getattr(aten, f"max_pool{d}d_with_indices_backward")
        return lambda: f(dy, x, k, s, p, [1] * d, False, idx)
    f = getattr(aten, f"avg_pool{d}d_backward")
    return lambda: f(dy, x, k, s, p, False, True, None)


def needed(op, for_torch=False):
    """Input arrays to put on the device for an op: what it reads, plus x
    (the argmax of a max-pool backward comes from x; PyTorch's backward ops
    take the input tensor too) and, for PyTorch's conv backward ops, w."""
    extra = {"x", "w"} if for_torch and OPS[op][0] == "conv" else {"x"}
    return (extra | set(OPS[op][2])) - {"argmax"}


def torch_inputs(torch, op, case, a_np, device):
    t = {k: torch.from_numpy(a_np[k]).to(device) for k in needed(op, for_torch=True)}
    if op == "max_pool_backward":
        f = getattr(torch.nn.functional, f"max_pool{case.nd}d")
        t["indices"] = f(t["x"], list(case.kernel), list(case.stride), list(case.padding),
                         return_indices=True)[1]
    return t


def on_cupy_stream(torch, fn):
    """Run PyTorch on the stream CuPy's CUDA events are recorded on. Both
    default to the legacy default stream (pointer 0); a non-default CuPy
    stream is handed to PyTorch as an ExternalStream."""
    ptr = backend.cupy.cuda.get_current_stream().ptr
    if ptr == 0:
        return fn
    stream = torch.cuda.ExternalStream(ptr)

    def call():
        with torch.cuda.stream(stream):
            return fn()
    return call
