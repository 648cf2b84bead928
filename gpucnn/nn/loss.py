"""Losses. Each is called as `loss, dlogits = loss_fn(output, target)` and
returns the mean loss as a Python float and its gradient with respect to the
output (same shape, dtype and device), ready for `model.backward(dlogits)`.

SoftmaxCrossEntropy(label_smoothing=0.0), output logits z (N, C):
    log p = z - logsumexp(z)       (stable: logsumexp(z) = max z + log sum e^(z - max z))
    q     = (1 - s) * t + s / C     t: one-hot of int class indices (N,), or
                                    a float matrix of soft labels (N, C) (mixup, cutmix)
    L     = -(1/N) sum_n sum_c q[n,c] log p[n,c]
    dL/dz = (p * sum_c q - q) / N  (= (p - q) / N when each row of q sums to 1)
    Matches torch.nn.CrossEntropyLoss(label_smoothing=s) with mean reduction.

MSELoss(), output y and target t of one shape:
    L     = 0.5 * mean((y - t)^2)  -- the course's 1/2 squared error, averaged
                                      over all N * D elements (= half of
                                      torch.nn.MSELoss's default mean)
    dL/dy = (y - t) / (N * D)
"""
from .. import backend


class SoftmaxCrossEntropy:
    def __init__(self, label_smoothing=0.0):
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def target_distribution(self, logits, target, check_range=True):
        """q (N, C) of the logits' dtype/device, label smoothing applied.
        check_range=False skips the class-index range check (a host read of the
        labels' min/max); forward_device reports the range on the device instead."""
        xp = backend.get_array_module(logits)
        n, c = logits.shape
        if backend.is_gpu_array(logits) and not backend.is_gpu_array(target):
            target = backend.to_gpu(target)
        target = xp.asarray(target)
        if target.ndim == 1 and target.dtype.kind in "iu":
            if target.shape[0] != n:
                raise ValueError(f"SoftmaxCrossEntropy: {target.shape[0]} class indices for logits {(n, c)}")
            if check_range and target.size and (int(target.min()) < 0 or int(target.max()) >= c):
                raise ValueError(f"SoftmaxCrossEntropy: class indices must be in [0, {c}), got "
                                 f"min {int(target.min())}, max {int(target.max())}")
            q = (xp.arange(c) == target[:, None]).astype(logits.dtype)
        elif target.ndim == 2 and target.dtype.kind == "f":
            if tuple(target.shape) != (n, c):
                raise ValueError(f"SoftmaxCrossEntropy: soft labels {tuple(target.shape)} for logits {(n, c)}")
            q = target.astype(logits.dtype)
        else:
            raise TypeError(f"SoftmaxCrossEntropy: target must be int class indices (N,) or float soft "
                            f"labels (N, C); got {target.dtype} {tuple(target.shape)} for logits {(n, c)}")
        if self.label_smoothing:
            q = (1 - self.label_smoothing) * q + self.label_smoothing / c
        return q

    def __call__(self, logits, target):
        loss, dlogits, _ = self.forward_device(logits, target, check_range=True)
        return backend.item(loss), dlogits

    def forward_device(self, logits, target, check_range=False):
        """(loss, dlogits, labels_ok) without reading anything back to the host:
        loss a 0-d float64 array on the logits' device (the same value __call__
        returns as a float), labels_ok a 0-d bool array saying whether every
        class index lies in [0, C) (None for soft labels). check_range=True
        checks the range on the host instead (a ValueError, as __call__ does)."""
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: logits must be (N, C), got {tuple(logits.shape)}")
        xp = backend.get_array_module(logits)
        n, c = logits.shape
        q = self.target_distribution(logits, target, check_range=check_range)
        labels_ok = None
        if not check_range and target.ndim == 1:
            target = xp.asarray(target) if not backend.is_gpu_array(logits) else backend.to_gpu(target)
            labels_ok = (target.min() >= 0) & (target.max() < c) if target.size else xp.asarray(True)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        loss = -(q * log_p).sum().astype(xp.float64) / n   # = -float(sum) / n, on the device
        dlogits = (xp.exp(log_p) * q.sum(axis=1, keepdims=True) - q) / n
        return loss, dlogits.astype(logits.dtype, copy=False), labels_ok


class MSELoss:
    def __call__(self, output, target):
        loss, dout, _ = self.forward_device(output, target)
        return backend.item(loss), dout

    def forward_device(self, output, target, check_range=False):
        """(loss as a 0-d float64 array on the output's device, dL/dy, None)."""
        if backend.is_gpu_array(output) and not backend.is_gpu_array(target):
            target = backend.to_gpu(target)
        target = backend.get_array_module(output).asarray(target)
        if tuple(output.shape) != tuple(target.shape):
            raise ValueError(f"MSELoss: output {tuple(output.shape)} and target {tuple(target.shape)} differ")
        diff = output - target.astype(output.dtype, copy=False)
        loss = 0.5 * (diff * diff).sum().astype(backend.get_array_module(output).float64) / diff.size
        return loss, diff / diff.size, None


def softmax(logits, axis=-1):
    """Stable softmax: e^(z - max z) / sum e^(z - max z)."""
    xp = backend.get_array_module(logits)
    e = xp.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
