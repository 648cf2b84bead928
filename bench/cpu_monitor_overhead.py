"""Cost of `gpucnn train --monitor` on a CPU training step: lenet_bn on
Fashion-MNIST-shaped batches (128 x 1 x 28 x 28, the default training setup),
Trainer.train_epoch over 20 batches with the monitor off and on, interleaved
in one process; medians of 15 after 2 warm-up rounds, reported per step.
end_epoch (the host copies) is inside the timed epoch and amortized over 20
steps, not over the ~420 of a real epoch, so the "on" figure is an upper bound.

    PYTHONPATH=. python bench/cpu_monitor_overhead.py [model] [image_size]
"""
import sys
import time

import numpy as np

from gpucnn import monitor, recipes
from gpucnn.trainer import array_loader

model = sys.argv[1] if len(sys.argv) > 1 else "lenet_bn"
size = int(sys.argv[2]) if len(sys.argv) > 2 else 28
steps, batch = 20, 128
rng = np.random.default_rng(0)
x = rng.standard_normal((steps * batch, 1, size, size), dtype=np.float32)
y = rng.integers(0, 10, steps * batch)
trainer = recipes.make_trainer(model, (1, size, size), 10, device="cpu")
watch = monitor.TrainingMonitor(trainer.model)
loader = array_loader(x, y, batch, shuffle=False)
times = {"off": [], "on": []}
for rep in range(17):
    for mode in ("off", "on"):
        trainer.monitor = watch if mode == "on" else None
        start = time.perf_counter()
        trainer.train_epoch(loader)
        times[mode].append((time.perf_counter() - start) / steps)
med = {k: float(np.median(v[2:])) for k, v in times.items()}
print(f"{model} {size}x{size} batch {batch}: step off {med['off'] * 1e3:.1f} ms, on {med['on'] * 1e3:.1f} ms "
      f"(x{med['on'] / med['off']:.3f}, medians of 15, interleaved)")
