"""A Keras-style model summary: one row per layer with its output shape,
parameter count and multiply-adds, then the totals.

    print(summary(model, (1, 28, 28)))       # input shape without the batch axis

The shapes come from one dummy forward of a batch of one zero sample in eval
mode under no_grad (nothing is cached, no running statistic changes, the
random generator is untouched); the model's training flags are restored.
Parameter counts include biases: Conv2d(3, 4, 5) has (5*5*3 + 1) * 4 = 504.
Multiply-adds are per sample: a conv K*(C/groups)*R*S per output position (Ho*Wo*K*C/groups*R*S;
a transposed conv (K/groups)*R*S per input element),
a Linear in*out; pooling, activations and normalization count as 0 (they
have no multiply-accumulate). A layer called twice gets two rows.
"""
import numpy as np

from . import backend
from .nn.module import forward_hook, no_grad


class LayerRow:
    def __init__(self, name, kind, output_shape, params, macs):
        self.name, self.kind, self.output_shape = name, kind, output_shape
        self.params, self.macs = params, macs


class Summary:
    def __init__(self, model_name, input_shape, rows, total_params):
        self.model_name, self.input_shape, self.rows = model_name, input_shape, rows
        self.total_params = total_params

    @property
    def total_macs(self):
        return sum(r.macs for r in self.rows)

    def __str__(self):
        def shape(s):
            return "(" + ", ".join(["None"] + [str(d) for d in s[1:]]) + ")"
        header = f"{'Layer (type)':<32}{'Output shape':<24}{'Param #':>12}{'Mult-adds':>16}"
        rule = "=" * len(header)
        lines = [f"Model: {self.model_name}", rule, header, rule]
        for r in self.rows:
            lines.append(f"{f'{r.name} ({r.kind})':<32}{shape(r.output_shape):<24}{r.params:>12,}{r.macs:>16,}")
        lines += [rule,
                  f"Input shape: {shape((1,) + tuple(self.input_shape))}",
                  f"Total params: {self.total_params:,}",
                  f"Trainable params: {self.total_params:,}",
                  f"Multiply-adds per sample: {self.total_macs:,}"]
        return "\n".join(lines)


def summary(model, input_shape):
    """Run the dummy forward and return a Summary (print it for the table)."""
    names = {id(m): name for name, m in model.named_modules()}
    params = model.parameters()
    xp = backend.get_array_module(params[0].data) if params else np
    dtype = params[0].data.dtype if params else np.float32
    x = xp.zeros((1,) + tuple(int(d) for d in input_shape), dtype=dtype)
    rows = []

    def record(module, inp, out):
        if module._modules and not module._parameters:
            return  # a container: its layers have their own rows
        own = sum(p.size for p in module._parameters.values())
        macs = module.macs(tuple(inp.shape), tuple(out.shape)) if hasattr(module, "macs") else 0
        rows.append(LayerRow(names.get(id(module), "?") or type(module).__name__, type(module).__name__,
                             tuple(out.shape), own, macs))

    modes = [(m, m.training) for _, m in model.named_modules()]
    model.eval()
    try:
        with no_grad(), forward_hook(record):
            model(x)
    finally:
        for m, training in modes:
            object.__setattr__(m, "training", training)
    return Summary(type(model).__name__, tuple(input_shape), rows, sum(p.size for p in params))
