"""gpucnn.save / gpucnn.load and checkpoints: round trips, the documented key
scheme, atomic writes, and refusal of missing, truncated, foreign and
pickle-bearing files."""
import os
import pickle
import zipfile

import numpy as np
import pytest

from gpucnn import nn, optim, serialization
from gpucnn import random as grandom
from gpucnn.serialization import SerializationError, load, save


def _model():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))


def test_round_trip_of_nested_values(tmp_path):
    obj = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "counts": np.array([1, 2], dtype=np.int64),
        "nested": {"state": {0: {"step": 3.0, "buf": np.ones(2)}, 1: {}}, "betas": (0.9, 0.999),
                   "names": ["a", "b"], "flag": True, "none": None, "big": 2 ** 100, "nan": float("nan")},
        "scalar": np.float32(1.5),
        "text": "hello",
    }
    path = tmp_path / "obj.npz"
    save(obj, path)
    back = load(path)
    np.testing.assert_array_equal(back["w"], obj["w"])
    assert back["w"].dtype == np.float32 and back["counts"].dtype == np.int64
    nested = back["nested"]
    assert list(nested["state"]) == [0, 1] and nested["state"][0]["step"] == 3.0  # int keys stay ints
    np.testing.assert_array_equal(nested["state"][0]["buf"], np.ones(2))
    assert nested["state"][1] == {}
    assert nested["betas"] == (0.9, 0.999) and isinstance(nested["betas"], tuple)
    assert nested["names"] == ["a", "b"] and nested["flag"] is True and nested["none"] is None
    assert nested["big"] == 2 ** 100 and np.isnan(nested["nan"])
    assert back["scalar"] == np.float32(1.5) and back["scalar"].dtype == np.float32
    assert back["text"] == "hello"


def test_key_scheme_is_readable_with_plain_numpy(tmp_path):
    model = _model()
    path = tmp_path / "ckpt.npz"
    serialization.save_checkpoint(path, model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epoch=3)
    with np.load(path, allow_pickle=False) as npz:
        assert "model/0.weight" in npz.files and "model/1.running_mean" in npz.files
        np.testing.assert_array_equal(npz["model/4.bias"], model[4].bias.data)
        assert "__gpucnn__" in npz.files


def test_state_dict_round_trip_gives_identical_predictions(tmp_path, rng):
    grandom.manual_seed(0)
    a, b = _model(), _model()
    x = rng.standard_normal((4, 1, 4, 4)).astype(np.float32)
    a(x)  # moves BatchNorm's running statistics
    save(a.state_dict(), tmp_path / "m.npz")
    b.load_state_dict(load(tmp_path / "m.npz"))
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_optimizer_state_survives_the_file(tmp_path):
    params = [nn.Parameter(np.linspace(-1, 1, 6))]
    opt = optim.Adam(params, lr=0.1, amsgrad=True)
    for _ in range(3):
        params[0].grad = params[0].data * 2
        opt.step()
    save(opt.state_dict(), tmp_path / "opt.npz")
    clone = [nn.Parameter(params[0].data.copy())]
    opt2 = optim.Adam(clone)
    opt2.load_state_dict(load(tmp_path / "opt.npz"))
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999) and opt2.param_groups[0]["amsgrad"] is True
    for p, o in ((params[0], opt), (clone[0], opt2)):
        p.grad = p.data * 2
        o.step()
    np.testing.assert_array_equal(params[0].data, clone[0].data)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save({"a": np.ones(3)}, path)
    calls = []

    def failing_write_array(fp, array, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return original(fp, array, **kwargs)

    original = np.lib.format.write_array
    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    with pytest.raises(OSError, match="disk full"):
        save({"a": np.zeros(3), "b": np.zeros(2)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load(path)["a"], np.ones(3))
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load(tmp_path / "missing.npz")


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    save(_model().state_dict(), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 20):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(SerializationError, match=f"cut{cut}.npz"):
            load(bad)


def test_foreign_files(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.ones(2))
    with pytest.raises(SerializationError, match="plain.npz.*not a gpucnn file"):
        load(plain)
    npy = tmp_path / "array.npy"
    np.save(npy, np.ones(2))
    with pytest.raises(SerializationError, match="array.npy"):
        load(npy)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(SerializationError, match="notes.txt"):
        load(text)


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_bearing_files_are_refused(tmp_path):
    raw = tmp_path / "model.pt"
    raw.write_bytes(pickle.dumps({"x": _Boom()}))
    with pytest.raises(SerializationError, match="pickled"):
        load(raw)
    # a gpucnn-looking archive smuggling an object array
    path = tmp_path / "smuggled.npz"
    save({"a": np.ones(2)}, path)
    with zipfile.ZipFile(path, "a") as zf, zf.open("evil.npy", "w") as f:
        np.lib.format.write_array(f, np.array([_Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(SerializationError, match="pickled"):
        load(path)


def test_save_refuses_what_it_cannot_store_safely(tmp_path):
    with pytest.raises(TypeError, match="object arrays"):
        save({"a": np.array([object()], dtype=object)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="cannot save a set"):
        save({"a": {1, 2}}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="expected a dict"):
        save([1, 2], tmp_path / "x.npz")
    assert not os.listdir(tmp_path)


def test_checkpoint_restores_model_optimizer_scheduler_and_rng(tmp_path, rng):
    grandom.manual_seed(1)
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    x = rng.standard_normal((4, 1, 4, 4)).astype(np.float32)
    y = model(x)
    model.backward(np.ones_like(y))
    opt.step()
    sched.step()
    path = tmp_path / "ckpt.npz"
    serialization.save_checkpoint(path, model, opt, epoch=7, scheduler=sched, extra={"history": [{"loss": 1.0}]})
    draw = grandom.generator().random(3)

    grandom.manual_seed(99)
    model2 = _model()
    opt2 = optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = optim.StepLR(opt2, step_size=1, gamma=0.5)
    info = serialization.load_checkpoint(path, model2, opt2, sched2)
    assert info == {"epoch": 7, "extra": {"history": [{"loss": 1.0}]}}
    np.testing.assert_array_equal(grandom.generator().random(3), draw)  # the random stream resumes
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[key], value)
    np.testing.assert_array_equal(opt2.state[id(model2[0].weight)]["momentum_buffer"],
                                  opt.state[id(model[0].weight)]["momentum_buffer"])


def test_load_checkpoint_of_a_plain_state_dict_is_refused(tmp_path):
    save(_model().state_dict(), tmp_path / "m.npz")
    with pytest.raises(SerializationError, match="not a training checkpoint"):
        serialization.load_checkpoint(tmp_path / "m.npz", _model())


# ---- the message says what the file is (issue 15, item 3) -----------------------------------------
def _message(path):
    with pytest.raises(SerializationError) as info:
        load(path)
    assert str(path) in str(info.value)  # names the file
    return str(info.value)


def test_messages_say_what_a_foreign_file_is(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(2))
    assert "single .npy array" in _message(tmp_path / "a.npy")
    (tmp_path / "notes.txt").write_text("epoch 3, loss 0.2\n")
    assert "is a text file (starts with 'epoch 3" in _message(tmp_path / "notes.txt")
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "is empty" in _message(tmp_path / "empty.npz")
    (tmp_path / "random.bin").write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 64, np.uint8)))
    assert "is not a zip/.npz archive" in _message(tmp_path / "random.bin")
    np.savez(tmp_path / "plain.npz", weights=np.ones(2))
    msg = _message(tmp_path / "plain.npz")
    assert "an .npz/zip archive with members ['weights']" in msg and "no '__gpucnn__' manifest" in msg
    with zipfile.ZipFile(tmp_path / "torch.pt", "w") as zf:  # the layout of torch.save's zip format
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    assert "PyTorch zip file" in _message(tmp_path / "torch.pt")
    for name in ("a.npy", "notes.txt", "empty.npz", "random.bin", "plain.npz", "torch.pt"):
        assert "pickled" not in _message(tmp_path / name)  # only a real pickle is called one


def test_messages_for_truncated_and_edited_archives(tmp_path):
    path = tmp_path / "m.npz"
    save(_model().state_dict(), path)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    assert "starts like a zip archive but is truncated or corrupt" in _message(tmp_path / "cut.npz")
    # a manifest naming a member the archive lacks: copy every member but one
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "edited.npz", "w") as dst:
        dropped = [n for n in src.namelist() if n != "__gpucnn__.npy"][0]
        for name in src.namelist():
            if name != dropped:
                dst.writestr(name, src.read(name))
    msg = _message(tmp_path / "edited.npz")
    assert "manifest names member" in msg and dropped[:-4] in msg and "pickled" not in msg


def test_a_real_pickle_is_called_one(tmp_path):
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    assert "is a pickled Python object" in _message(tmp_path / "legacy.pt")


def test_checkpoint_missing_keys_are_named(tmp_path):
    save({"format": serialization.CHECKPOINT_FORMAT, "epoch": 1, "model": {}}, tmp_path / "c.npz")
    with pytest.raises(SerializationError, match=r"missing the key\(s\) \['optimizer', 'scheduler', 'rng', 'extra'\]"):
        serialization.read_checkpoint(tmp_path / "c.npz")
