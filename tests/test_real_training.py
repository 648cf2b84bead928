"""One short real training run on Fashion-MNIST (CI installs the Debian
package dataset-fashion-mnist; gpu_check passes its --data-dir as
GPUCNN_DATA_DIR): 1 epoch on a 10,000-image subset must beat 80% test
accuracy on the full 10,000-image test set, on the CPU and (gpu marker) on
the GPU."""
import json
import os
from pathlib import Path

import pytest

from gpucnn import cli
from gpucnn.data.datasets import FASHION_MNIST_DIR

DATA_DIR = Path(os.environ.get("GPUCNN_DATA_DIR") or FASHION_MNIST_DIR)


@pytest.mark.slow
@pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"{DATA_DIR} missing (install dataset-fashion-mnist)")
@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_fashion_mnist_one_epoch_beats_80_percent(tmp_path, device):
    metrics = tmp_path / "m.json"
    rc = cli.main(["train", "--dataset", "fashion-mnist", "--data-dir", str(DATA_DIR),
                   "--subset", "10000", "--epochs", "1", "--model", "lenet_bn", "--batch-size", "64",
                   "--device", device, "--val-split", "0", "--no-progress", "--metrics-out", str(metrics)])
    assert rc == 0
    m = json.loads(metrics.read_text())
    print(f"{device}: test accuracy {m['test_accuracy']:.4f}, "
          f"{m['epochs'][0]['images_per_second']:.0f} images/s")
    assert m["dataset"] == "fashion-mnist" and m["device"] == device and len(m["epochs"]) == 1
    assert m["test_accuracy"] > 0.80, m["test_accuracy"]
