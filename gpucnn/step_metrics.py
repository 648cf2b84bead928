"""An epoch's loss sum, correct count and batch checks, kept on the device.

The Trainer's deferred mode (sync="deferred", the default on the GPU) adds
each batch's loss, correct count and label check into 0-d device arrays and
reads them on the host once per epoch (read()), plus every few steps for the
progress bar through a non-blocking copy (backend.HostSnapshot): no step
waits for the GPU. The sums are the same numbers the per-step mode adds on
the host (float64 loss * n, integer counts), so both modes report identical
metrics.

Checks that used to read the device at every step are recorded instead:
    first_bad_labels   index of the first batch with a class index outside [0, C), or -1
    first_nonfinite    index of the first batch with a NaN/inf loss, or -1 (its loss in bad_loss)
and raised (ValueError naming the batch, NonFiniteLossError) at the next
read: the progress snapshot that sees them, or at the latest the epoch's end.
Unlike the per-step mode, optimizer steps taken after the bad batch have
happened by then.
"""
import math

from . import backend


class DeviceEpochSums:
    def __init__(self, xp, what="Trainer"):
        self.xp, self.what = xp, what
        self.loss_sum = xp.zeros((), xp.float64)
        self.correct = xp.zeros((), xp.int64)
        self.step = xp.zeros((), xp.int64)                # the batch index, counted on the device
        self.first_bad_labels = xp.full((), -1, xp.int64)
        self.first_nonfinite = xp.full((), -1, xp.int64)
        self.bad_loss = xp.zeros((), xp.float64)
        self.num_classes = None
        self.reset()

    def reset(self):
        """Zero the sums in place (a captured graph keeps writing these arrays)."""
        self.seen = 0                                     # host: batch sizes are host numbers
        for a, value in ((self.loss_sum, 0), (self.correct, 0), (self.step, 0), (self.first_bad_labels, -1),
                         (self.first_nonfinite, -1), (self.bad_loss, 0)):
            a[...] = value
        self._pending = None                              # an in-flight HostSnapshot and its `seen`
        self.last = (0, math.nan, math.nan)               # (seen, mean loss, accuracy) as last read

    def _first(self, slot, bad):
        """slot <- this batch's index where slot is still -1 and `bad` holds."""
        slot[...] = self.xp.where((slot < 0) & bad, self.step, slot)

    def add(self, n, loss, correct, labels_ok=None, num_classes=None):
        """add_device, then count(n): one batch of n samples."""
        self.add_device(n, loss, correct, labels_ok, num_classes)
        self.count(n)

    def add_device(self, n, loss, correct, labels_ok=None, num_classes=None):
        """The device part (what a CUDA graph captures): loss a 0-d float64 array
        (the batch mean), correct a 0-d integer array, labels_ok a 0-d bool or None."""
        xp = self.xp
        finite = xp.isfinite(loss)
        self._first(self.first_nonfinite, ~finite)
        self.bad_loss[...] = xp.where((self.first_nonfinite == self.step) & ~finite, loss, self.bad_loss)
        if labels_ok is not None:
            self.num_classes = num_classes
            self._first(self.first_bad_labels, ~labels_ok)
        self.loss_sum += loss * n
        self.correct += correct
        self.step += 1

    def count(self, n):
        """The host part: n more samples seen."""
        self.seen += n

    # ---- reads ----------------------------------------------------------------
    def _fields(self):
        return [self.loss_sum, self.correct, self.first_bad_labels, self.first_nonfinite, self.bad_loss]

    def _check(self, values, epoch, raise_nonfinite=True):
        from .trainer import NonFiniteLossError
        loss_sum, correct, bad_labels, nonfinite, bad_loss = values
        if bad_labels >= 0:
            raise ValueError(f"{self.what}: batch {int(bad_labels) + 1} of epoch {epoch} has class indices "
                             f"outside [0, {self.num_classes})")
        if raise_nonfinite and nonfinite >= 0:
            raise NonFiniteLossError(epoch, int(nonfinite) + 1, bad_loss)
        return loss_sum, int(correct), nonfinite >= 0

    def poll(self, every, step, epoch, raise_nonfinite=True):
        """Progress: take in a finished snapshot (raising what it shows) and start
        a new one every `every` steps; never waits. -> self.last."""
        if self._pending is not None and self._pending[0].ready():
            snapshot, seen = self._pending
            self._pending = None
            loss_sum, correct, _ = self._check(snapshot.values(), epoch, raise_nonfinite)
            self.last = (seen, loss_sum / max(seen, 1), correct / max(seen, 1))
        if self._pending is None and (step + 1) % max(every, 1) == 0:
            self._pending = (backend.HostSnapshot(self._fields()), self.seen)
        return self.last

    def read(self, epoch, raise_nonfinite=True):
        """The blocking read at the epoch's end -> (seen, loss_sum, correct, any_nonfinite)."""
        self._pending = None
        xp = self.xp
        values = backend.to_cpu(xp.stack([a.astype(xp.float64) for a in self._fields()])).tolist()
        loss_sum, correct, nonfinite = self._check(values, epoch, raise_nonfinite)
        return self.seen, loss_sum, correct, nonfinite
