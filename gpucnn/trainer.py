"""The training loop: Trainer, the course's fit(), and a small in-memory loader.

Mini-batch SGD as the course teaches it: each epoch visits the training set
in batches drawn without replacement (a fresh permutation per epoch), and
every batch does forward, loss, backward, one optimizer step. With
full_batch=True the gradients of all batches of the epoch are accumulated
(each weighted by its share of the samples) and one step is taken per epoch:
full-batch gradient descent, for the course's comparison.

Per epoch: the scheduler (if any) steps once at the end of train_epoch;
validation runs in eval mode under no_grad (nothing cached for backward).
Accuracy compares argmax(logits) with the class index, or with argmax of the
target row for soft labels (mixup/cutmix).
"""
import math
import time

import numpy as np

import contextlib

from . import amp, backend, cuda_graph, input_pipeline, serialization
from . import random as grandom
from .optim.step_scalars import capturable
from .data.loader import DataLoader
from .step_metrics import DeviceEpochSums
from .nn.loss import SoftmaxCrossEntropy, softmax
from .nn.module import no_grad


def array_loader(x, y, batch_size=64, shuffle=True, seed=None):
    """The course's plain mini-batch loop: a DataLoader over in-memory arrays
    without prefetch (batches drawn without replacement each epoch)."""
    return DataLoader(x, y, batch_size, shuffle=shuffle, seed=seed, prefetch=0)


class NonFiniteLossError(FloatingPointError):
    """A batch's loss was NaN or infinite; no optimizer step was taken for it."""

    def __init__(self, epoch, step, loss):
        super().__init__(f"non-finite loss ({loss}) at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


def _labels(target):
    """Class indices of a target batch: itself, or argmax of soft labels."""
    return target.argmax(axis=1) if target.ndim == 2 else target


SYNC_MODES = ("auto", "step", "deferred")


class Trainer:
    def __init__(self, model, optimizer, loss_fn=None, scheduler=None, device="cpu", full_batch=False,
                 skip_nonfinite=False, sync="auto", progress_every=8, precision="fp32", cuda_graph=False,
                 input_pipeline="auto", gpu_augment="auto"):
        """skip_nonfinite: a batch with a NaN/inf loss is skipped (no backward, no
        step) and counted in `nonfinite_steps`; otherwise it raises
        NonFiniteLossError before the step, so the weights stay those of the
        last good step.

        sync: "step" reads each batch's loss, correct count and label check on
        the host (a device->host wait per step on the GPU); "deferred" keeps
        them on the device (gpucnn.step_metrics) and reads them once per epoch,
        the progress bar from a non-blocking snapshot every `progress_every`
        steps; a bad label or a NaN loss is raised at the next read, after the
        steps in between were taken. "auto": deferred on the GPU unless
        skip_nonfinite (which must decide before each step), step on the CPU.
        Both modes report identical metrics.

        precision: "fp32", "tf32", "bf16" or "fp16" (gpucnn.amp: float32 master
        weights, low-precision conv/pool/linear, batch norm and the loss in
        float32; fp16 adds a GradScaler, `self.scaler`).

        cuda_graph: True captures a whole training step once per batch shape and
        replays it (gpucnn.cuda_graph; deferred mode; on the CPU a stand-in
        replays the recorded step); "auto" does so on the GPU when the step can
        be captured (else eager, the reason in `cuda_graph_reason`); False never.

        input_pipeline: True feeds training batches through
        gpucnn.input_pipeline.DeviceBatches (pinned buffers, copies on their own
        stream overlapping the previous step; on the CPU its stand-in, for tests);
        "auto": on the GPU only; False: never.
        gpu_augment: True runs the training DataLoader's transform (its
        augmentations) on the device batches inside the pipeline, with draws from
        gpucnn.random.device_generator (other numbers than the CPU's, the same
        distributions); "auto": when the pipeline is on and the device is the GPU;
        False: on the host in the loader, as on the CPU. CPU training with the
        defaults is unchanged. GPU side: not yet run on a GPU."""
        for name, value in (("input_pipeline", input_pipeline), ("gpu_augment", gpu_augment)):
            if value not in (True, False, "auto"):
                raise ValueError(f"Trainer: {name} must be True, False or 'auto', got {value!r}")
        self.input_pipeline, self.gpu_augment = input_pipeline, gpu_augment
        self.last_pipeline = None   # the DeviceBatches of the last training epoch (or None)
        if cuda_graph not in (True, False, "auto"):
            raise ValueError(f"Trainer: cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
        self.cuda_graph, self.cuda_graph_reason, self.step_graph = cuda_graph, "", None
        if sync not in SYNC_MODES:
            raise ValueError(f"Trainer: sync must be one of {SYNC_MODES}, got {sync!r}")
        self.sync, self.progress_every = sync, int(progress_every)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.skip_nonfinite, self.nonfinite_steps = skip_nonfinite, 0
        self.loss_fn = SoftmaxCrossEntropy() if loss_fn is None else loss_fn
        self.device = backend.resolve_device(device)
        self.full_batch = full_batch
        self.history = []
        self.monitor = None  # a gpucnn.monitor.TrainingMonitor, or None (off)
        # Data-parallel runs set this to a callable(*sums) -> the same sums over every
        # process (gpucnn.commands.train_distributed), so metrics are sums / counts.
        self.reduce_sums = None
        if self.device == "gpu":
            model.to_gpu()
        else:
            model.to_cpu()
        self.amp = None
        self.set_precision(precision)

    def set_precision(self, precision):
        """Install the mixed-precision policy (gpucnn.amp) on the model."""
        if self.amp is not None:
            self.amp.remove()
        self.precision = amp.check(precision)
        self.amp = amp.autocast(self.model, precision) if precision != "fp32" else None
        self.scaler = amp.GradScaler(enabled=precision == "fp16")

    def _logits(self, xb):
        """The model's output, in float32 whatever the policy computed it in."""
        logits = self.model(xb)
        return logits if self.amp is None else logits.astype(np.float32, copy=False)

    def _optimizer_step(self):
        """optimizer.step(), through the GradScaler in fp16 (skipped on inf/NaN gradients)."""
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    # ---- batches --------------------------------------------------------
    def _move(self, a):
        return backend.to_gpu_async(a) if self.device == "gpu" else np.asarray(a)

    def _cast_input(self, xb):
        """xb cast to the model's float dtype (integer inputs as they are)."""
        params = self.model.parameters()
        if params and np.dtype(xb.dtype).kind == "f":
            xb = xb.astype(params[0].data.dtype, copy=False)
        return xb

    def _input(self, xb):
        """A batch on the model's device, cast to the model's float dtype."""
        return self._move(self._cast_input(xb))

    def _total(self, *sums):
        return sums if self.reduce_sums is None else self.reduce_sums(*sums)

    def _all_finite(self, loss):
        """The loss is finite here and, in a data-parallel run, on every rank (so
        all ranks skip or stop at the same step and their collectives stay in step)."""
        bad = 0 if math.isfinite(loss) else 1
        return (bad if self.reduce_sums is None else self.reduce_sums(bad)[0]) == 0

    def _correct(self, logits, yb):
        return backend.item((logits.argmax(axis=1) == _labels(yb)).sum())

    # ---- the overlapped input pipeline ----------------------------------------
    def pipeline_on(self):
        """Whether training batches go through the overlapped input pipeline."""
        return self.input_pipeline is True or (self.input_pipeline == "auto" and self.device == "gpu")

    def augment_on_device(self):
        """Whether the training loader's transform runs on the device batches."""
        if self.gpu_augment is True and not self.pipeline_on():
            raise ValueError("Trainer: gpu_augment=True needs the input pipeline (input_pipeline=True, "
                             "or 'auto' on the GPU)")
        return self.pipeline_on() and (self.gpu_augment is True
                                       or (self.gpu_augment == "auto" and self.device == "gpu"))

    def _training_batches(self, loader):
        """`loader`, or its batches through the input pipeline (with its transform
        moved onto the device when augment_on_device())."""
        self.last_pipeline = None
        if not self.pipeline_on():
            return loader
        transform = None
        if self.augment_on_device() and getattr(loader, "transform", None) is not None:
            transform, loader = loader.transform, loader.without_transform()
        params = self.model.parameters()
        xp = backend.xp_for(self.device)
        self.last_pipeline = input_pipeline.DeviceBatches(
            loader, transform, grandom.device_generator(xp) if transform is not None else None,
            x_dtype=params[0].data.dtype if params else None, gpu=self.device == "gpu")
        return self.last_pipeline

    # ---- deferred mode: no host read inside a step -------------------------
    def deferred(self):
        """Whether the next epoch runs in deferred mode (see __init__'s `sync`)."""
        if self.sync == "deferred" and self.skip_nonfinite:
            raise ValueError("Trainer: skip_nonfinite decides before each step, so it needs sync='step' "
                             "(or 'auto'), not 'deferred'")
        return self.sync == "deferred" or (self.sync == "auto" and not self.skip_nonfinite
                                           and (self.device == "gpu" or self.cuda_graph is True))

    def _use_graph(self):
        """Whether this epoch's steps are captured and replayed (see cuda_graph)."""
        if self.cuda_graph is False:
            return False
        reason = cuda_graph.eligible(self)
        if not reason and self.sync == "step":
            reason = "sync='step' reads the host at every step"
        if not reason and self.cuda_graph == "auto" and self.device != "gpu":
            reason = "auto captures on the GPU only"
        if reason and self.cuda_graph is True:
            raise ValueError(f"Trainer: cuda_graph=True, but the step cannot be captured: {reason}")
        self.cuda_graph_reason = reason
        return not reason

    def _eager_deferred_step(self, sums, xb, yb):
        xb, yb = self._input(xb), self._move(yb)
        logits = self._logits(xb)
        loss, dlogits, labels_ok = self._device_loss(logits, yb)
        self._backward_step(dlogits, len(xb))
        self._account(sums, xb, yb, logits, loss, labels_ok)

    def _backward_step(self, dlogits, n):
        """Backward of a batch of n samples, then the optimizer step (full-batch
        mode: the gradient summed over samples, divided by the total at the end)."""
        if self.full_batch:
            self.model.backward(self.scaler.scale(dlogits * n))
            return
        self.optimizer.zero_grad()
        self.model.backward(self.scaler.scale(dlogits))
        if self.monitor is not None:
            self.monitor.before_step()
        self._optimizer_step()

    def _full_batch_step(self, seen):
        """Full-batch mode's one step per epoch, on the gradient averaged over `seen` samples."""
        if not (self.full_batch and seen):
            return
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad /= seen
        if self.monitor is not None:
            self.monitor.before_step()
        self._optimizer_step()

    def _graph_for_epoch(self, xp):
        """(sums, StepGraph) for a captured epoch: the metric arrays persist
        across epochs (zeroed in place), so one capture serves every epoch."""
        capturable(self.optimizer)
        if self.step_graph is None:
            self.step_graph = cuda_graph.StepGraph(self, DeviceEpochSums(xp))
        self.step_graph.sums.reset()
        return self.step_graph.sums, self.step_graph

    def _host_batch(self, xb, yb):
        """A batch as arrays of the model's float dtype, not moved (for the static buffers)."""
        xb, yb = (a if backend.is_gpu_array(a) else np.asarray(a) for a in (xb, yb))
        return self._cast_input(xb), yb

    def _device_loss(self, logits, yb):
        """(loss 0-d float64 device array, dlogits, labels_ok or None), no host read
        for the built-in losses; a custom loss_fn returns a float (its own read)."""
        if hasattr(self.loss_fn, "forward_device"):
            return self.loss_fn.forward_device(logits, yb)
        loss, dlogits = self.loss_fn(logits, yb)
        xp = backend.get_array_module(logits)
        return xp.asarray(loss, dtype=xp.float64), dlogits, None

    def _account(self, sums, xb, yb, logits, loss, labels_ok, device_only=False):
        add = sums.add_device if device_only else sums.add
        add(len(xb), loss, (logits.argmax(axis=1) == _labels(yb)).sum(), labels_ok, logits.shape[-1])

    def _read(self, sums, epoch):
        """The epoch's one blocking read -> (seen, loss_sum, correct), summed over
        ranks in a data-parallel run (which also agree on a NaN loss anywhere)."""
        alone = self.reduce_sums is None
        seen, loss_sum, correct, nonfinite = sums.read(epoch, raise_nonfinite=alone)
        if alone:
            return seen, loss_sum, correct
        seen, loss_sum, correct, bad = self.reduce_sums(seen, loss_sum, correct, int(nonfinite))
        if bad:
            raise NonFiniteLossError(epoch, "unknown (deferred mode)", "nan/inf on some rank")
        return seen, loss_sum, correct

    def _train_epoch_deferred(self, loader, progress, use_graph=False):
        self.model.train()
        xp = backend.xp_for(self.device)
        epoch = len(self.history) + 1
        graph = None
        if use_graph:
            sums, graph = self._graph_for_epoch(xp)
        else:
            sums = DeviceEpochSums(xp)
        start = time.perf_counter()
        if self.full_batch:
            self.optimizer.zero_grad()
        if self.monitor is not None:
            self.monitor.begin_epoch()
        with backend.stream_scope(graph.stream) if graph else contextlib.nullcontext():
            self._deferred_batches(loader, sums, graph, progress, epoch, start)
            self._full_batch_step(sums.seen)
            seen, loss_sum, correct = self._read(sums, epoch)
        seconds = time.perf_counter() - start   # after the read: the device has finished the epoch
        if self.monitor is not None:
            self.monitor.end_epoch()
        if self.scheduler is not None:
            self.scheduler.step()
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1),
                "seconds": seconds, "images_per_second": seen / max(seconds, 1e-12)}

    def _deferred_batches(self, loader, sums, graph, progress, epoch, start):
        """The epoch's steps: replayed through `graph` when given, else eager."""
        n_batches = len(loader)
        eager = lambda xb, yb: self._eager_deferred_step(sums, xb, yb)  # noqa: E731
        for i, (xb, yb) in enumerate(loader):
            if graph is not None:
                graph.run(*self._host_batch(xb, yb), eager)
            else:
                eager(xb, yb)
            if progress is not None:
                seen, mean_loss, accuracy = sums.poll(self.progress_every, i, epoch, self.reduce_sums is None)
                progress(i, n_batches, mean_loss, accuracy, seen / max(time.perf_counter() - start, 1e-12))

    def _evaluate_deferred(self, loader):
        sums = DeviceEpochSums(backend.xp_for(self.device), "Trainer.evaluate")
        for i, (xb, yb) in enumerate(loader):
            xb, yb = self._input(xb), self._move(yb)
            logits = self._logits(xb)
            loss, _, labels_ok = self._device_loss(logits, yb)
            self._account(sums, xb, yb, logits, loss, labels_ok)
        seen, loss_sum, correct = self._read(sums, len(self.history))
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    # ---- epochs ---------------------------------------------------------
    def train_epoch(self, loader, progress=None):
        """One pass over `loader` -> {loss, accuracy, seconds, images_per_second}
        (loss and accuracy averaged over samples, during training)."""
        loader = self._training_batches(loader)
        use_graph = self.cuda_graph is not False and self._use_graph()
        if use_graph or self.deferred():
            return self._train_epoch_deferred(loader, progress, use_graph)
        self.model.train()
        n_batches = len(loader)
        seen = correct = 0
        loss_sum = 0.0
        start = time.perf_counter()
        if self.full_batch:
            self.optimizer.zero_grad()
        if self.monitor is not None:
            self.monitor.begin_epoch()
        for i, (xb, yb) in enumerate(loader):
            xb, yb = self._input(xb), self._move(yb)
            n = len(xb)
            logits = self._logits(xb)
            loss, dlogits = self.loss_fn(logits, yb)
            if not self._all_finite(loss):
                if not self.skip_nonfinite:
                    raise NonFiniteLossError(len(self.history) + 1, i + 1, loss)
                self.nonfinite_steps += 1
                continue
            self._backward_step(dlogits, n)
            seen += n
            loss_sum += loss * n
            correct += self._correct(logits, yb)
            if progress is not None:
                progress(i, n_batches, loss_sum / seen, correct / seen,
                         seen / max(time.perf_counter() - start, 1e-12))
        self._full_batch_step(seen)
        seconds = time.perf_counter() - start
        seen, loss_sum, correct = self._total(seen, loss_sum, correct)
        if self.monitor is not None:
            self.monitor.end_epoch()  # outside `seconds`: its host copies are not the step's cost
        if self.scheduler is not None:
            self.scheduler.step()
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1),
                "seconds": seconds, "images_per_second": seen / max(seconds, 1e-12)}

    def evaluate(self, loader):
        """Mean loss and accuracy in eval mode, caching nothing."""
        was_training = self.model.training
        self.model.eval()
        seen = correct = 0
        loss_sum = 0.0
        try:
            with no_grad():
                if self.deferred():
                    return self._evaluate_deferred(loader)
                for xb, yb in loader:
                    xb, yb = self._input(xb), self._move(yb)
                    logits = self._logits(xb)
                    loss, _ = self.loss_fn(logits, yb)
                    seen += len(xb)
                    loss_sum += loss * len(xb)
                    correct += self._correct(logits, yb)
        finally:
            self.model.train(was_training)
        seen, loss_sum, correct = self._total(seen, loss_sum, correct)
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    def predict_proba(self, x, batch_size=512):
        """Softmax probabilities (NumPy, (N, classes)) in eval mode."""
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            with no_grad():
                for start in range(0, len(x), batch_size):
                    logits = self._logits(self._input(x[start:start + batch_size]))
                    out.append(backend.to_cpu(softmax(logits, axis=1)))
        finally:
            self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def fit(self, train_loader, val_loader=None, epochs=1, early_stopping_patience=None,
            on_epoch_end=None, progress=False):
        """Train for `epochs` more epochs -> the new history records
        {epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds,
        images_per_second} (val_* None without a val_loader); epochs are
        numbered on from self.history. With early_stopping_patience, training
        stops after that many epochs without a better val accuracy and the
        best weights are restored."""
        if early_stopping_patience is not None and val_loader is None:
            raise ValueError("Trainer.fit: early stopping needs a val_loader")
        records = []
        best_accuracy, best_state, stale = -1.0, None, 0
        for _ in range(epochs):
            epoch = len(self.history) + 1
            bar = self._progress_bar(epoch, len(train_loader)) if progress else None
            try:
                train = self.train_epoch(train_loader, progress=bar.update if bar else None)
            finally:
                if bar:
                    bar.close()
                if self.monitor is not None:
                    self.monitor.detach()
            val = self.evaluate(val_loader) if val_loader is not None else {"loss": None, "accuracy": None}
            record = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                      "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                      "seconds": train["seconds"], "images_per_second": train["images_per_second"]}
            self.history.append(record)
            records.append(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if early_stopping_patience is not None:
                if val["accuracy"] > best_accuracy:
                    best_accuracy, best_state, stale = val["accuracy"], self.model.state_dict(), 0
                else:
                    stale += 1
                    if stale >= early_stopping_patience:
                        break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return records

    def _progress_bar(self, epoch, total):
        from tqdm import tqdm  # a dependency only for the optional bar

        return _TqdmProgress(tqdm(total=total, desc=f"epoch {epoch}", unit="batch", leave=False))

    # ---- checkpoints ------------------------------------------------------
    def save_checkpoint(self, path, epoch, extra=None):
        """Model, optimizer, scheduler, RNG state, epoch, history and `extra`."""
        serialization.save_checkpoint(path, self.model, self.optimizer, epoch, self.scheduler,
                                      extra={"history": self.history, "user": extra,
                                             "grad_scaler": self.scaler.state_dict()})

    def load_checkpoint(self, path):
        """Restore a save_checkpoint file (history included) -> {epoch, extra}."""
        state = serialization.load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        saved = state["extra"] or {}
        self.history = list(saved.get("history") or [])
        if saved.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["grad_scaler"])
        return {"epoch": state["epoch"], "extra": saved.get("user")}


class _TqdmProgress:
    """Adapts a tqdm bar to train_epoch's progress callback."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, batch_index, n_batches, loss, accuracy, images_per_second):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", img_s=f"{images_per_second:.0f}")

    def close(self):
        self.bar.close()


def fit(model, x, y, optimizer, epochs=1, batch_size=64, full_batch=False, x_val=None, y_val=None,
        loss_fn=None, scheduler=None, device="cpu", early_stopping_patience=None, progress=False):
    """The course's loop on in-memory arrays -> the history records.
    Mini-batch SGD (batches of `batch_size` without replacement, reshuffled
    each epoch from gpucnn.random), or full_batch=True for one gradient step
    per epoch on the whole training set (computed in chunks of batch_size)."""
    trainer = Trainer(model, optimizer, loss_fn, scheduler, device, full_batch)
    train_loader = array_loader(x, y, batch_size=batch_size, shuffle=not full_batch)
    val_loader = None if x_val is None else array_loader(x_val, y_val, batch_size=max(batch_size, 512),
                                                       shuffle=False)
    return trainer.fit(train_loader, val_loader, epochs, early_stopping_patience, progress=progress)
