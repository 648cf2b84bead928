"""`gpucnn bench`: the quick suite on the CPU with tiny repeats, its JSON
against the schema, the reports, and --compare. No timing is asserted."""
import argparse
import copy
import json
import math

import numpy as np
import pytest

from gpucnn.benchmark import command, ops, report, runner, schema, stats, suites, timing


def _bench(argv):
    parser = argparse.ArgumentParser(prog="gpucnn")
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench"] + argv)
    return args.func(args)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick-suite CPU run shared by the tests below (tiny repeats)."""
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"quick.{k}" for k in ("json", "md", "png")}
    rc = _bench(["--suite", "quick", "--device", "cpu", "--repeats", "1", "--warmup", "0",
                 "--json", str(paths["json"]), "--markdown", str(paths["md"]), "--plot", str(paths["png"])])
    return rc, paths, json.loads(paths["json"].read_text())


def test_quick_suite_json_validates(quick_run):
    rc, _, doc = quick_run
    assert rc == 0
    assert schema.validate(doc) == []
    cases = suites.get_suite("quick")
    expected = sum(3 if c.family == "conv" else 4 for c in cases)
    assert len(doc["results"]) == expected
    assert {c.nd for c in cases} == {1, 2, 3}
    for entry in doc["results"]:
        (v,) = entry["versions"]
        assert v["time"]["median_s"] > 0, entry
        assert v["time"]["min_s"] <= v["time"]["median_s"] <= v["time"]["max_s"]
        assert (v["gflops"] is None) == (entry["geometry"]["family"] == "pool")


def test_quick_suite_agrees_with_torch_where_importable(quick_run):
    _, _, doc = quick_run
    if not doc["settings"]["torch"]:
        pytest.skip(doc["settings"]["torch_skipped"])
    for entry in doc["results"]:
        v = entry["versions"][0]
        assert v["check"]["ok"], (entry["case"], entry["op"], v["check"])
        assert v["ratios"]["vs_torch_cpu"] > 0
    assert doc["summary"]["geomean"]["vs_torch_cpu"]["count"] == len(doc["results"])


def test_reports_written(quick_run):
    _, paths, doc = quick_run
    md = paths["md"].read_text()
    assert md.startswith("# gpucnn bench: quick suite on cpu")
    assert all(e["case"] in md for e in doc["results"])
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schema_rejects_broken_documents(quick_run):
    _, _, doc = quick_run
    bad = copy.deepcopy(doc)
    del bad["results"][0]["op"]
    bad["results"][1]["versions"][0]["time"]["median_s"] = -1.0
    bad["settings"]["device"] = "tpu"
    errors = schema.validate(bad)
    assert any("results[0]" in e and "'op'" in e for e in errors)
    assert any("results[1].versions[0].time.median_s" in e for e in errors)
    assert any("settings.device" in e for e in errors)


def test_compare_two_runs(quick_run, tmp_path, capsys):
    _, paths, doc = quick_run
    slower = copy.deepcopy(doc)
    for entry in slower["results"]:
        for v in entry["versions"]:
            v["time"]["median_s"] *= 2
    b = tmp_path / "b.json"
    b.write_text(json.dumps(slower))
    md = tmp_path / "cmp.md"
    assert _bench(["--compare", str(paths["json"]), str(b), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "geometric mean of B/A: 2.000" in out
    header, rows, g = report.compare_rows(doc, slower)
    assert len(rows) == len(doc["results"]) and math.isclose(g, 2.0)
    assert "| case | op | version | A ms | B ms | B/A |" in md.read_text()


def test_conv_flops_and_pool_bytes():
    case = suites.conv("t", 2, 3, (9, 8), 4, (3, 2), stride=(2, 1), padding=(1, 0))
    # Ho = (9 + 2 - 3) // 2 + 1 = 5, Wo = (8 - 2) // 1 + 1 = 7
    assert case.y_shape == (2, 4, 5, 7)
    assert ops.work("conv_forward", case)["flops"] == 2 * 2 * 4 * 3 * 3 * 2 * 5 * 7
    p = suites.pool("p", 2, 3, (6, 6), 2)
    # x 216 elements read; y (2, 3, 3, 3) = 54 written, plus a 54-element argmax
    assert ops.work("max_pool_forward", p)["bytes"] == 4 * (216 + 54 + 54)
    assert ops.work("avg_pool_backward", p)["bytes"] == 4 * (54 + 216)


def test_suites_are_valid_geometries():
    for name in suites.SUITES:
        for case in suites.get_suite(name):
            assert min(case.y_shape) >= 1, case
    resnet = {c.name: c for c in suites.get_suite("resnet50")}
    assert resnet["resnet50/stem7x7"].y_shape == (64, 64, 112, 112)
    assert resnet["resnet50/stempool"].y_shape == (64, 64, 56, 56)
    air = {c.name: c for c in suites.get_suite("airbench")}
    assert air["airbench/whiten"].y_shape == (1024, 24, 31, 31)
    assert air["airbench/pool4"].y_shape == (1024, 256, 1, 1)


def test_compare_flags_wrong_outputs():
    ref = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert stats.compare(ref.copy(), ref)["ok"]
    off = ref.copy()
    off[1, 2] += 1.0
    assert not stats.compare(off, ref)["ok"]
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert not stats.compare(nan, ref)["ok"]
    idx = np.arange(4, dtype=np.int32)
    assert not stats.compare((ref, idx), (ref, idx[::-1].copy()))["ok"]


def test_rotation_and_summaries():
    assert timing.rotation_count(1 << 30, 50 << 20) == 1
    assert timing.rotation_count(10 << 20, 50 << 20) == 10
    assert timing.rotation_count(1, 50 << 20) == 16
    calls = []
    f = timing.rotating([lambda: calls.append(0), lambda: calls.append(1)])
    for _ in range(5):
        f()
    assert calls == [0, 1, 0, 1, 0]
    s = timing.summarize([4.0, 1.0, 3.0, 2.0, 5.0], 2, "perf_counter")
    assert (s["median_s"], s["min_s"], s["max_s"], s["q1_s"], s["q3_s"]) == (3.0, 1.0, 5.0, 2.0, 4.0)
    assert math.isclose(stats.geomean([2.0, 8.0]), 4.0)


def test_gpu_branch_bookkeeping_with_a_stand_in_device(monkeypatch):
    """The GPU branch cannot run here; this drives its bookkeeping (versions,
    input rotation, checks against the CPU path, baselines skipped with a
    reason, schema) with NumPy standing in for CuPy and the CPU timer for
    CUDA events. It proves no GPU timing."""
    from types import SimpleNamespace

    from gpucnn import backend

    fake_cupy = SimpleNamespace(
        __version__="stand-in", ndarray=type("NoSuchArray", (), {}), asarray=np.array,
        get_default_memory_pool=lambda: SimpleNamespace(free_all_blocks=lambda: None),
        cuda=SimpleNamespace(Device=lambda: SimpleNamespace(id=0),
                             get_current_stream=lambda: SimpleNamespace(ptr=0),
                             runtime=SimpleNamespace(cudaDevAttrL2CacheSize=38,
                                                     deviceGetAttribute=lambda attr, dev: 1 << 16)))
    monkeypatch.setattr(backend, "cupy", fake_cupy)
    monkeypatch.setattr(backend, "resolve_device", lambda device=None: "gpu")
    monkeypatch.setattr(runner, "time_gpu", timing.time_cpu)
    monkeypatch.setattr(runner.ceilings, "measure", lambda device, small=False: {
        "device": device, "copy_gbps": 100.0, "matmul_gflops": 1000.0})
    cases = [suites.conv("c", 2, 3, 8, 4, 3, padding=1), suites.pool("p", 2, 3, 8, 2)]
    doc = runner.Runner(repeats=1, warmup=0, use_torch=False, log=lambda m: None).run(
        cases, list(ops.OPS), suite="stand-in")
    assert schema.validate(doc) == []
    assert doc["settings"]["device"] == "gpu" and doc["settings"]["l2_bytes"] == 1 << 16
    for entry in doc["results"]:
        assert set(entry["baselines"]) == {"cpu_path", "cudnn_tf32_off", "cudnn_tf32_on"}
        assert "skipped" in entry["baselines"]["cudnn_tf32_off"]
        assert "time" in entry["baselines"]["cpu_path"]
        for v in entry["versions"]:
            assert "skipped" not in v, (entry["op"], v)
            assert v["check"]["ok"] and v["check"]["reference"] == "cpu_path"
            assert v["rotated_copies"] == timing.rotation_count(
                sum(np.prod(s) * 4 for s in _reads(entry)), 1 << 16)
            assert "vs_cpu_path" in v["ratios"]
    assert "vs cpu_path" in report.text_report(doc) and "vs cpu_path" in report.markdown_report(doc)
    conv_versions = [v["version"] for e in doc["results"] if e["op"] == "conv_forward" for v in e["versions"]]
    from gpucnn.functional import conv_gpu
    assert conv_versions == [str(v) for v in conv_gpu.VERSIONS["forward"]]


def _reads(entry):
    g = entry["geometry"]
    shapes = {"x": g["x_shape"], "w": g["w_shape"], "dy": g["y_shape"]}
    return [shapes[k] for k in ops.OPS[entry["op"]][2] if k in shapes]


def test_e2e_torch_mirror_is_the_same_model():
    torch = pytest.importorskip("torch")
    from gpucnn import models
    from gpucnn.benchmark.e2e import run_e2e, torch_mirror
    model = models.build(models.DEFAULT_MODEL).eval()
    mirror = torch_mirror(torch, model)
    mirror.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = mirror.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-5)

    result = run_e2e(batch=4, repeats=1, warmup=0, log=lambda m: None)
    runs = {r["name"]: r for r in result["runs"]}
    assert runs["gpucnn-cpu"]["images_per_s"] > 0 and runs["torch-cpu"]["images_per_s"] > 0
    assert "skipped" in runs["gpucnn-gpu"] or runs["gpucnn-gpu"]["images_per_s"] > 0


def test_bench_exits_nonzero_when_a_kernel_version_crashes(tmp_path, monkeypatch, capsys):
    """A version that raises is recorded as skipped, listed under summary.crashed,
    printed, and makes the command exit 1 (issue 15)."""
    real = runner.ours_call

    def crashing(op, case, arrays, *rest):
        if op == "max_pool_forward":
            raise RuntimeError("simulated kernel crash")
        return real(op, case, arrays, *rest)
    monkeypatch.setattr(runner, "ours_call", crashing)
    out = tmp_path / "b.json"
    rc = _bench(["--suite", "quick", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--no-torch",
                 "--ops", "max_pool_forward", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 1 and schema.validate(doc) == []
    assert doc["summary"]["crashed"] and all("simulated kernel crash" in c for c in doc["summary"]["crashed"])
    captured = capsys.readouterr()
    assert "CRASHED kernel versions" in captured.out and "a kernel version failed its check or crashed" in captured.err
