"""Using a trained model: checkpoint metadata and gpucnn.load_model, and the
`eval`, `predict` and `export` commands (tiny digits runs and untrained models)."""
import json
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn import cli, inference, models, serialization
from gpucnn.data import FASHION_MNIST_CLASSES, Normalize, load_dataset
from gpucnn.data.datasets import FASHION_MNIST_DIR
from gpucnn.image_files import read_image
from gpucnn.nn.loss import softmax
from gpucnn.nn.module import no_grad

pytest.importorskip("sklearn")
PIL = pytest.importorskip("PIL.Image")

TINY = ["--dataset", "digits", "--subset", "400", "--device", "cpu", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch lenet_bn digits run: (checkpoint path, training metrics)."""
    folder = tmp_path_factory.mktemp("run")
    ckpt, metrics = folder / "model.ckpt", folder / "metrics.json"
    rc = cli.main(["train", *TINY, "--model", "lenet_bn", "--epochs", "2", "--checkpoint", str(ckpt),
                   "--metrics-out", str(metrics)])
    assert rc == 0
    return ckpt, json.loads(metrics.read_text())


def _untrained_checkpoint(path, name, input_shape, classes, normalize, seed=0):
    """A fresh zoo model saved with metadata (predictions need no training to be compared)."""
    gpucnn.manual_seed(seed)
    model = models.build(name, input_shape[0], len(classes), input_shape[1])
    meta = inference.ModelMetadata(name, {"in_channels": input_shape[0], "num_classes": len(classes),
                                          "image_size": input_shape[1]}, input_shape, classes, normalize, "npz")
    inference.save_model(model, path, meta)
    return model


def _in_memory_proba(model, normalize, images):
    model.eval()
    with no_grad():
        return softmax(model(normalize.apply(images)), axis=1)


# ---- load_model ----------------------------------------------------------------
def test_load_model_restores_model_metadata_and_weights(trained):
    ckpt, _ = trained
    model = gpucnn.load_model(ckpt)
    meta = model.metadata
    assert not model.training
    assert (meta.model, meta.input_shape, meta.classes, meta.dataset) == \
        ("lenet_bn", (1, 8, 8), tuple(str(c) for c in range(10)), "digits")
    assert meta.model_args == {"in_channels": 1, "num_classes": 10, "image_size": 8, "dropout": None}
    state = serialization.load(ckpt)["model"]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    # the statistics recipes.prepare_data fitted in training (same split, same seed)
    ds = load_dataset("digits")
    from gpucnn import recipes
    norm = recipes.prepare_data(ds, 0.1, 400, 3).normalize
    np.testing.assert_array_equal(meta.normalize.mean, norm.mean)
    np.testing.assert_array_equal(meta.normalize.std, norm.std)


def test_old_checkpoint_without_metadata_says_what_is_missing(tmp_path, capsys):
    path = tmp_path / "old.ckpt"
    serialization.save_checkpoint(path, models.build("lenet5", 1, 10, 8),
                                  extra={"history": [], "user": {"model": "lenet5", "dataset": "digits"}})
    with pytest.raises(inference.MissingMetadataError, match="missing model name.*input shape.*class names"):
        gpucnn.load_model(path)
    assert cli.main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpucnn eval: error:") and "normalization statistics" in err and "\n" not in err


def test_save_model_refuses_incomplete_metadata(tmp_path):
    with pytest.raises(inference.MissingMetadataError, match="classes"):
        inference.save_model(models.build("lenet5", 1, 10, 8), tmp_path / "m.ckpt",
                             {"model": "lenet5", "model_args": {}, "input_shape": [1, 8, 8], "normalize": {}})


# ---- eval ------------------------------------------------------------------------
def test_eval_reproduces_the_test_accuracy_training_reported(trained, tmp_path, capsys):
    ckpt, metrics = trained
    out_json, plot = tmp_path / "eval.json", tmp_path / "cm.png"
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--device", "cpu", "--json", str(out_json),
                     "--plot", str(plot)]) == 0
    result = json.loads(out_json.read_text())
    assert result["test_accuracy"] == metrics["test_accuracy"]  # exactly: same weights, data, batches
    assert result["test_loss"] == metrics["test_loss"]          # no label smoothing in this run
    counts = np.array(result["confusion_matrix"])
    assert counts.shape == (10, 10) and counts.sum() == result["test_images"] == 359
    assert np.trace(counts) / counts.sum() == result["test_accuracy"]
    for row in result["per_class"]:
        i = row["class_index"]
        assert row["support"] == counts[i].sum() and row["correct"] == counts[i, i]
        assert row["accuracy"] == pytest.approx(counts[i, i] / counts[i].sum())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in out and "support" in out


def test_eval_reproduces_training_after_early_stopping(tmp_path, capsys):
    """Early stopping restores an earlier epoch's weights after the last per-epoch
    checkpoint: training re-writes the checkpoint with the weights it tests."""
    ckpt, metrics = tmp_path / "es.ckpt", tmp_path / "m.json"
    assert cli.main(["train", *TINY, "--model", "lenet5", "--epochs", "6", "--lr", "0.01", "--early-stopping", "1",
                     "--checkpoint", str(ckpt), "--metrics-out", str(metrics)]) == 0
    assert "restored the weights of epoch 3" in capsys.readouterr().out  # this run does stop early
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["test_accuracy"] == \
        json.loads(metrics.read_text())["test_accuracy"]


def test_eval_refuses_a_dataset_of_another_shape(trained, tmp_path, capsys):
    ckpt, _ = trained
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((20, 12, 12), np.uint8), y=np.arange(20) % 10)
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--dataset", "npz", "--data-dir", str(data)]) == 2
    assert "(1, 12, 12)" in capsys.readouterr().err


# ---- predict ---------------------------------------------------------------------
def _uint8_dataset(tmp_path, n=6, size=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=np.arange(n) % 3, x_test=x, y_test=np.arange(n) % 3)
    return x, path


def _predict_json(tmp_path, ckpt, files, *extra):
    out = tmp_path / "pred.json"
    rc = cli.main(["predict", "--checkpoint", str(ckpt), "--json", str(out), *extra, *map(str, files)])
    return rc, json.loads(out.read_text())


def _check_png_pipeline(tmp_path, ds, name, n=4):
    """The first n test images of dataset `ds` (in memory: uint8 / 255) saved as 8-bit PNG
    files: `gpucnn predict` gives bitwise the probabilities of the in-memory pipeline
    (Normalize, then the model), for every file, and the classes in order."""
    norm = Normalize.fit(ds.x_train[:500])
    c, h, _ = ds.input_shape
    model = _untrained_checkpoint(tmp_path / "m.ckpt", name, (c, h, h), ds.classes, norm)
    files = []
    for i, img in enumerate(ds.x_test[:n, 0]):
        files.append(tmp_path / f"img{i}.png")
        PIL.fromarray((img * 255).round().astype(np.uint8)).save(files[-1])  # exact: pixels are k / 255
    rc, result = _predict_json(tmp_path, tmp_path / "m.ckpt", files, "--top", str(len(ds.classes)))
    assert rc == 0
    expected = _in_memory_proba(model, norm, ds.x_test[:n])
    got = np.array([[t["probability"] for t in sorted(p["top"], key=lambda t: t["class_index"])]
                    for p in result["predictions"]])
    np.testing.assert_array_equal(got, expected)
    for p, row in zip(result["predictions"], expected):
        assert p["class_index"] == int(row.argmax()) and p["class_name"] == ds.classes[p["class_index"]]
        assert p["probability"] == p["top"][0]["probability"] == float(row.max())
        assert [t["probability"] for t in p["top"]] == sorted((t["probability"] for t in p["top"]), reverse=True)


def test_png_files_predict_as_the_in_memory_pipeline(tmp_path):
    _, data = _uint8_dataset(tmp_path)
    _check_png_pipeline(tmp_path, load_dataset("npz", data), "lenet_bn", n=6)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}")
def test_fashion_mnist_png_predicts_as_the_in_memory_pipeline(tmp_path):
    ds = load_dataset("fashion-mnist")
    assert ds.classes == FASHION_MNIST_CLASSES
    _check_png_pipeline(tmp_path, ds, "lenet_bn")


def test_predict_reports_bad_files_and_still_predicts_the_others(trained, tmp_path, capsys):
    ckpt, _ = trained
    ds = load_dataset("digits")
    good = tmp_path / "good.npy"
    np.save(good, ds.x_test[0, 0])
    wrong_shape, junk = tmp_path / "rgb.npy", tmp_path / "junk.png"
    np.save(wrong_shape, np.zeros((3, 8, 8), np.float32))
    junk.write_bytes(b"not an image")
    rc, result = _predict_json(tmp_path, ckpt, [wrong_shape, good, junk, tmp_path / "missing.jpg"])
    assert rc == 1
    assert [p["file"] for p in result["predictions"]] == [str(good)]
    assert [e["file"] for e in result["errors"]] == [str(wrong_shape), str(junk), str(tmp_path / "missing.jpg")]
    err = capsys.readouterr().err
    assert f"{wrong_shape}: array of shape (3, 8, 8)" in err and f"{junk}: not a readable image" in err
    assert "3 of 4 file(s) failed" in err


def test_image_conversion_grayscale_resize_and_npy_scaling(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    PIL.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "rgb.png")  # equal channels: luma = gray
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png", (1, 8, 8))[0], gray / np.float32(255))
    PIL.fromarray(np.full((20, 30), 200, np.uint8)).save(tmp_path / "big.png")
    img = read_image(tmp_path / "big.png", (1, 8, 8))
    assert img.shape == (1, 8, 8) and np.allclose(img, 200 / 255)  # resized, constant stays constant
    PIL.fromarray(gray).save(tmp_path / "gray.jpg", quality=95)
    assert read_image(tmp_path / "gray.jpg", (3, 8, 8)).shape == (3, 8, 8)
    np.save(tmp_path / "u8.npy", gray)
    np.testing.assert_array_equal(read_image(tmp_path / "u8.npy", (1, 8, 8))[0], gray / np.float32(255))
    np.save(tmp_path / "f.npy", np.full((1, 8, 8), 0.25, np.float32))
    assert np.all(read_image(tmp_path / "f.npy", (1, 8, 8)) == 0.25)


def test_missing_pillow_is_one_line_naming_the_extra(trained, tmp_path, monkeypatch, capsys):
    ckpt, _ = trained
    PIL.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpucnn predict: error:") and "gpucnn[images]" in err and "\n" not in err


# ---- export ----------------------------------------------------------------------
def test_export_command_onnx_matches_the_checkpoint(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    ckpt, _ = trained
    out, weights = tmp_path / "m.onnx", tmp_path / "m.safetensors"
    assert cli.main(["export", "--checkpoint", str(ckpt), "--onnx", str(out), "--safetensors", str(weights)]) == 0
    model = gpucnn.load_model(ckpt)
    x = model.metadata.normalize.apply(load_dataset("digits").x_test[:17])
    with no_grad():
        expected = model(x)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5
    state = gpucnn.load(weights)
    assert list(state) == list(model.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(state[key], value)


def test_export_needs_an_output(trained, capsys):
    assert cli.main(["export", "--checkpoint", str(trained[0])]) == 2
    assert "--onnx" in capsys.readouterr().err
