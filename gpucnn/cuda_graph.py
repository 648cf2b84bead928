"""A whole training step captured once and replayed (Trainer(cuda_graph=...)).

On the GPU a step of eager array code costs ~10 us of host time per kernel
launch; a CUDA graph replays all of a step's launches for a few microseconds.
StepGraph captures forward, loss, backward, the optimizer update and the
epoch's device-side metrics of one batch shape and replays them:

    host, per step:  copy the batch into the static input/label buffers (async, same stream)
                     optimizer.step_scalars.fill()  (lr, bias corrections -> device memory)
                     graph.launch();  then the host-side effects a replay cannot redo
                     (the samples count, batch norm's num_batches_tracked)
    captured:        logits = model(x_static); loss; backward; step_scalars.apply();
                     the metrics' add_device (batch index counted on the device)

- Warm-up: the first batch of the shape runs eagerly (compiles every kernel,
  fills the memory pool, creates the optimizer state); the capture follows.
- Batches of another shape (the last, smaller one) run eagerly, through the
  same optimizer scalars and metric arrays.
- The graph is keyed by the identities of the arrays it reads and writes
  across steps (parameters, float buffers, optimizer state, scalars, metric
  sums, static buffers). When the key changes between steps (load_state_dict,
  to_gpu, ...) the step is captured again. When a replay itself changes it, the
  step rebinds an attribute to a new array, which a real replay would not do
  (it keeps writing the array it captured): a RuntimeError naming the array.
  The CPU stand-in (backend._StandInGraph re-runs the Python closure) detects
  that; on the GPU no Python runs during a replay.
- Every array allocated during the capture stays alive as long as the graph
  (backend._CudaGraph records the pool's blocks; cupy#9655), and the key's
  arrays are held too.

eligible() says why a trainer's step cannot be captured (dropout draws new
random numbers each step, the monitor and skip_nonfinite work on the host per
step, the fp16 GradScaler reads found_inf on the host, full-batch mode
accumulates over the epoch, data-parallel runs all-reduce outside the stream, only SGD/Adam/AdamW have device-memory scalars,
batch norm with momentum=None needs a per-step factor).

GPU status: compiled and emulated, not yet run on a GPU. On the CPU the
stand-in runs the same bookkeeping (tests: N replayed steps equal N eager
steps bitwise).
"""
import numpy as np

from . import backend
from .nn.dropout import Dropout
from .nn.norm import _BatchNorm
from .optim.step_scalars import _NAMES as _CAPTURABLE


def eligible(trainer):
    """'' when the trainer's step can be captured, else the reason."""
    if trainer.full_batch:
        return "full_batch accumulates gradients over the whole epoch"
    if trainer.skip_nonfinite:
        return "skip_nonfinite decides on the host before each step"
    if trainer.reduce_sums is not None:
        return "data-parallel training all-reduces gradients outside the device stream (not captured yet)"
    if trainer.monitor is not None:
        return "the monitor records statistics on the host at each step"
    if trainer.scaler.is_enabled():
        return "fp16's GradScaler reads found_inf on the host at each step (use bf16)"
    if not hasattr(trainer.loss_fn, "forward_device"):
        return f"the loss {type(trainer.loss_fn).__name__} has no forward_device"
    if not isinstance(trainer.optimizer, tuple(_CAPTURABLE)) or any(
            g.get("amsgrad") for g in trainer.optimizer.param_groups):
        return f"{type(trainer.optimizer).__name__} has no device-memory scalars (SGD, Adam, AdamW do)"
    for name, m in trainer.model.named_modules():
        if isinstance(m, Dropout) and m.p > 0:
            return f"dropout ({name}) draws new random numbers at every step"
        if isinstance(m, _BatchNorm) and m.momentum is None:
            return f"batch norm ({name}) with momentum=None changes its factor at every step"
    return ""


class StepGraph:
    def __init__(self, trainer, sums):
        self.trainer, self.sums = trainer, sums
        self.gpu = trainer.device == "gpu"
        self.stream = backend.new_stream() if self.gpu else None   # one stream for every epoch
        self.shape = None           # (x shape, x dtype, y shape, y dtype) of the captured step
        self.graph = None
        self.key = None
        self.launches = self.captures = 0
        self.eager_steps = 0        # warm-up steps of the captured shape

    # ---- what the graph depends on ------------------------------------------
    def _key(self):
        t = self.trainer
        named = {}
        for name, p in t.model.named_parameters():
            named[f"parameter {name}"] = p.data
        for name, b in t.model.named_buffers():
            if np.dtype(b.dtype).kind == "f":
                named[f"buffer {name}"] = b
        for i, (p, _) in enumerate(t.optimizer.step_scalars.entries):
            for k, v in t.optimizer.state.get(id(p), {}).items():
                if hasattr(v, "shape"):
                    named[f"optimizer state {k} of parameter {i}"] = v
        named["optimizer scalars"] = t.optimizer.step_scalars.device
        for k in ("loss_sum", "correct", "step", "first_bad_labels", "first_nonfinite", "bad_loss"):
            named[f"metric {k}"] = getattr(self.sums, k)
        named["static input"], named["static labels"] = self.x, self.y
        return {k: id(v) for k, v in named.items()}, list(named.values())

    # ---- one step -------------------------------------------------------------
    def matches(self, xb, yb):
        return self.shape == (xb.shape, xb.dtype, yb.shape, yb.dtype)

    def run(self, xb, yb, eager_step):
        """Step on host batch (xb, yb): replayed when a graph of this shape exists
        (captured now if the shape was warmed up), else eager_step(xb, yb) runs it
        and the shape becomes the one to capture next time."""
        if self.shape is None:
            self.shape = (xb.shape, xb.dtype, yb.shape, yb.dtype)
            xp = backend.xp_for(self.trainer.device)
            self.x, self.y = xp.empty(xb.shape, xb.dtype), xp.empty(yb.shape, yb.dtype)
        if not self.matches(xb, yb) or self.eager_steps == 0:
            self.eager_steps += self.matches(xb, yb)
            return eager_step(xb, yb)
        backend.copy_to_device_async(self.x, xb)    # same stream as the replay: ordered, no wait
        backend.copy_to_device_async(self.y, yb)
        self.trainer.optimizer.step_scalars.fill()
        key, arrays = self._key()
        if self.graph is None or key != self.key:
            self._capture(key, arrays)
        tracked = [(m, int(m.num_batches_tracked)) for m in self._batch_norms]
        self.graph.launch()
        self.launches += 1
        self.sums.count(self.shape[0][0])
        for m, before in tracked:              # a replay runs no Python: count its batch here
            m.num_batches_tracked = np.array(before + 1, dtype=np.int64)
        if self.graph.is_stand_in:             # only the stand-in runs Python that could rebind
            self._check_unchanged(key)

    def _capture(self, key, arrays):
        self._batch_norms = [m for _, m in self.trainer.model.named_modules() if isinstance(m, _BatchNorm)]
        self.graph = backend.capture_graph(self._captured_step, self.gpu)
        self.captures += 1
        self.key, self.held = key, arrays      # the arrays stay alive with the graph

    def _captured_step(self):
        t = self.trainer
        logits = t._logits(self.x)
        loss, dlogits, labels_ok = t._device_loss(logits, self.y)
        t.optimizer.zero_grad()
        t.model.backward_params(dlogits)
        t.optimizer.step_scalars.apply()
        t._account(self.sums, self.x, self.y, logits, loss, labels_ok, device_only=True)

    def _check_unchanged(self, key_before):
        key, _ = self._key()
        changed = sorted(k for k in key if key[k] != key_before.get(k))
        if changed:
            raise RuntimeError(f"cuda_graph: the captured step rebinds {', '.join(changed)} to a new array; "
                               f"a replay would keep writing the captured one (update it in place)")
