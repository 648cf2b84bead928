"""One short real training run on Fashion-MNIST (CI installs the Debian
package dataset-fashion-mnist): 1 epoch on a 10,000-image subset on the CPU
must beat 80% test accuracy on the full 10,000-image test set."""
import json

import pytest

from gpucnn import cli
from gpucnn.data.datasets import FASHION_MNIST_DIR


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"{FASHION_MNIST_DIR} missing "
                    "(install dataset-fashion-mnist)")
def test_fashion_mnist_one_epoch_beats_80_percent(tmp_path):
    metrics = tmp_path / "m.json"
    rc = cli.main(["train", "--dataset", "fashion-mnist", "--subset", "10000", "--epochs", "1",
                   "--model", "lenet_bn", "--batch-size", "64", "--device", "cpu", "--val-split", "0", "--no-progress",
                   "--metrics-out", str(metrics)])
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert m["dataset"] == "fashion-mnist" and len(m["epochs"]) == 1
    assert m["test_accuracy"] > 0.80, m["test_accuracy"]
