"""`gpucnn bench --e2e` with several batches, precisions and step modes, whole
epochs, and bench/time_to_accuracy.py: CPU runs at tiny sizes checking the
JSON, the skip reasons of the GPU variants here, and the CLI errors. No
timing is asserted (issue 11 item 6; the GPU runs: not yet run on a GPU)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gpucnn import backend, cli
from gpucnn.benchmark import e2e, schema, step_modes

ROOT = Path(__file__).resolve().parents[1]


def _have_data():
    """Fashion-MNIST installed, or scikit-learn for the digits fallback."""
    from gpucnn.data import datasets
    return datasets.FASHION_MNIST_DIR.is_dir() or importlib.util.find_spec("sklearn") is not None


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    paths = {k: out / f"e2e.{k}" for k in ("json", "md")}
    epoch = ["--e2e-epoch", "12"] if _have_data() else []
    rc = cli.main(["bench", "--device", "cpu", "--e2e", "only", "--e2e-model", "lenet5", "--e2e-batch", "2", "3",
                   "--e2e-precision", "fp32", "bf16", "--repeats", "1", "--warmup", "0", "--json", str(paths["json"]),
                   "--markdown", str(paths["md"])] + epoch)
    return rc, json.loads(paths["json"].read_text()), paths["md"].read_text()


def test_e2e_batches_precisions_modes_json(e2e_run):
    rc, doc, md = e2e_run
    assert rc == 0 and schema.validate(doc) == []
    assert [(e["model"], e["batch"]) for e in doc["e2e_models"]] == [("lenet5", 2), ("lenet5", 3)]
    assert doc["e2e"] == doc["e2e_models"][0]
    torch_ok = importlib.util.find_spec("torch") is not None
    for e in doc["e2e_models"]:
        assert e["precisions"] == ["fp32", "bf16"] and e["modes"] == list(step_modes.MODES)
        runs = {r["name"]: r for r in e["runs"]}
        for r in e["runs"]:
            assert {"side", "device", "mode", "precision"} <= set(r) and ("time" in r) != ("skipped" in r)
        for p, suffix in (("fp32", ""), ("bf16", " bf16")):
            mine = runs[f"gpucnn-cpu{suffix}"]
            assert mine["precision"] == p and mine["mode"] == "eager" and mine["images_per_s"] > 0
            assert ("time" in runs[f"torch-cpu{suffix}"]) == torch_ok
        # every GPU variant is listed, skipped here with the reason
        gpu = [r for r in e["runs"] if r["device"] == "gpu"]
        assert len(gpu) == 2 * 6
        assert {(r["side"], r["mode"]) for r in gpu} == {("gpucnn", m) for m in step_modes.OUR_MODES} | \
            {("torch", m) for m in step_modes.TORCH_MODES}
        if not backend.gpu_available():
            assert all(r["skipped"].startswith("no usable GPU") for r in gpu)
        if torch_ok:
            cpu_ratios = [r for r in e["ratios"] if r["device"] == "cpu"]
            assert {r["precision"] for r in cpu_ratios} == {"fp32", "bf16"}
            for r in cpu_ratios:
                ours = runs["gpucnn-cpu" + ("" if r["precision"] == "fp32" else " bf16")]["time"]["median_s"]
                theirs = runs["torch-cpu" + ("" if r["precision"] == "fp32" else " bf16")]["time"]["median_s"]
                assert r["vs_torch"]["eager"] == pytest.approx(ours / theirs)
    assert "| lenet5 | 3 | cpu | bf16 | eager |" in md and "vs torch graph" in md


def test_e2e_whole_epoch(e2e_run):
    _, doc, md = e2e_run
    if not _have_data():
        pytest.skip("neither Fashion-MNIST nor scikit-learn's digits here")
    assert [(e["model"], e["batch"], e["images"]) for e in doc["e2e_epoch"]] == [("lenet5", 2, 12), ("lenet5", 3, 12)]
    for e in doc["e2e_epoch"]:
        runs = {r["side"]: r for r in e["runs"]}
        assert runs["gpucnn"]["images_per_s"] > 0 and 0 <= runs["gpucnn"]["train_accuracy"] <= 1
        assert "images_per_s" in runs["torch"] or runs["torch"]["skipped"]
    assert "## Whole epochs" in md


def test_gpu_variants_record_why_they_did_not_run(monkeypatch):
    """As if CuPy saw a GPU but PyTorch had no CUDA: each GPU variant is
    attempted and recorded as skipped with its reason, the CPU runs kept."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available() or backend.gpu_available():
        pytest.skip("a GPU is here: the variants run")
    monkeypatch.setattr(e2e.backend, "gpu_available", lambda: True)
    out = e2e.run_e2e("lenet5", batch=2, repeats=1, warmup=0, log=lambda m: None, gpu_steps=1)
    gpu = {(r["side"], r["mode"]): r for r in out["runs"] if r["device"] == "gpu"}
    assert all(gpu[("torch", m)]["skipped"] == "NotRunHere: PyTorch has no usable CUDA device"
               for m in step_modes.TORCH_MODES)
    assert all(gpu[("gpucnn", m)]["skipped"] for m in step_modes.OUR_MODES)
    assert {r["name"] for r in out["runs"] if "time" in r} == {"gpucnn-cpu", "torch-cpu"}
    out = e2e.run_e2e("lenet5", batch=2, repeats=1, warmup=0, log=lambda m: None, cpu_steps=False)
    cpu = [r for r in out["runs"] if r["device"] == "cpu"]   # --no-cpu-baseline on a GPU run
    assert len(cpu) == 2 and all(r["skipped"] == "not asked for (--no-cpu-baseline)" for r in cpu)


def test_torch_graph_needs_cuda():
    torch = pytest.importorskip("torch")
    model = step_modes.build("lenet5")
    x, y = step_modes.batch((2, 1, 28, 28))
    with pytest.raises(step_modes.NotRunHere, match="CUDA graph needs a CUDA device"):
        step_modes.theirs(torch, model, x, y, "graph", device="cpu")
    with pytest.raises(ValueError, match="mode must be one of"):
        step_modes.theirs(torch, model, x, y, "deferred", device="cpu")
    run = step_modes.theirs(torch, model, x, y, "eager", "bf16", device="cpu", steps=2)
    run()   # torch.autocast on the CPU, two steps


def test_our_modes_take_the_same_steps():
    """ours(): eager, deferred and graph (the CPU stand-in) end with the same weights."""
    x, y = step_modes.batch((4, 1, 28, 28))
    states = []
    for mode in step_modes.OUR_MODES:
        model = step_modes.build("lenet5")
        step_modes.ours(model, x, y, mode, device="cpu", steps=3)()
        states.append({k: np.asarray(v).copy() for k, v in model.state_dict().items()})
    fresh = step_modes.build("lenet5").state_dict()
    assert any(not np.array_equal(states[0][k], np.asarray(fresh[k])) for k in fresh)   # it trained
    for other in states[1:]:
        for k in states[0]:
            np.testing.assert_allclose(other[k], states[0][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("option, value", [("--e2e-precision", "fp8"), ("--e2e-mode", "jit")])
def test_unknown_precision_or_mode_is_a_usage_error(option, value, capsys):
    rc = cli.main(["bench", "--device", "cpu", "--e2e", "only", option, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"gpucnn bench: error: {option}: unknown value(s) '{value}'; choose from")


def _time_to_accuracy():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", ROOT / "bench" / "time_to_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_to_accuracy_both_sides(tmp_path):
    """A tiny recipe (lenet5, 2 epochs of 96 images, crop flip, cosine, label
    smoothing): target 0 is reached after epoch 1, 1.01 never."""
    pytest.importorskip("torch")
    if not _have_data():
        pytest.skip("neither Fashion-MNIST nor scikit-learn's digits here")
    tta = _time_to_accuracy()
    out = tmp_path / "tta.json"
    common = ["--model", "lenet5", "--epochs", "2", "--subset", "96", "--test-subset", "64", "--batch-size", "32",
              "--device", "cpu"]
    assert tta.main(["--out", str(out), "--target", "0"] + common) == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["augment"] == ["crop", "flip"] and doc["settings"]["schedule"] == "cosine"
    assert doc["test_images"] == 64 and set(doc["sides"]) == {"gpucnn", "torch"}
    for side in doc["sides"].values():
        assert side["status"] == "reached" and side["reached_epoch"] == 1 and len(side["epochs"]) == 1
        assert 0 < side["time_to_target_s"] <= side["total_s"]
    assert tta.main(["--out", str(out), "--target", "1.01", "--sides", "gpucnn"] + common) == 0
    side = json.loads(out.read_text())["sides"]["gpucnn"]
    assert side["status"] == "not reached" and side["time_to_target_s"] is None and len(side["epochs"]) == 2
