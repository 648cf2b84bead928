""""Verified on a GPU" cannot go stale (issue 15, item 7): every kernel source and
fused formula is recorded by sha256 with the GPU results that verified it, and
its status (record and README table) must say when it changed since."""
import json
import re
import shutil
from pathlib import Path

import pytest

from gpucnn.devtools import kernel_hashes as kh

ROOT = Path(__file__).resolve().parents[1]


def test_record_and_readme_match_the_sources():
    problems = kh.check(ROOT)
    assert not problems, ("The GPU-verification record is out of date. Fix each line below (docs/robustness.md, "
                          "'Verified on a GPU'):\n  " + "\n  ".join(problems))


def test_every_verified_entry_names_existing_results():
    for key, entry in kh.load_record(ROOT)["sources"].items():
        if entry["verified_by"]:
            assert (ROOT / entry["verified_by"]).is_dir(), (key, entry["verified_by"])


@pytest.fixture
def repo(tmp_path):
    """A copy of what the check reads (kernels/, fused_gpu.py, the record) in a
    known state: every source as just verified by a GPU check, and a README
    whose status table has one row per source saying so."""
    shutil.copytree(ROOT / "kernels", tmp_path / "kernels")
    for rel in (kh.FUSED, kh.RECORD):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    kh.update(tmp_path, verified_by="bench/results/gpu-h100-x", gpu="an H100", commit="0000000")
    names = sorted({key.split(":")[0] for key in kh.load_record(tmp_path)["sources"] if not key.endswith(".cuh")})
    rows = "".join(f"| kernel {i} | `{name}` | v1 | verified on an H100 |\n" for i, name in enumerate(names))
    (tmp_path / kh.README).write_text(f"# x\n\n{kh.TABLE_HEADING}\n\n| kernel | source | versions | status |\n"
                                      f"|---|---|---|---|\n{rows}\n## Next\n")
    assert kh.check(tmp_path) == []
    return tmp_path


def _set_readme_status(root, source, status):
    lines = (root / kh.README).read_text().splitlines(keepends=True)
    out = []
    for line in lines:
        if f"`{source}`" in line and line.startswith("|"):
            cells = line.rstrip("\n").rstrip("|").split("|")
            line = "|".join(cells[:-1] + [f" {status} "]) + "|\n"
        out.append(line)
    (root / kh.README).write_text("".join(out))


def test_a_changed_kernel_fails_until_its_status_says_so(repo):
    cu = repo / "kernels" / "pool2d.cu"
    cu.write_text(cu.read_text() + "\n// an edit\n")
    problems = kh.check(repo)
    assert any("kernels/pool2d.cu changed" in p and "--update" in p for p in problems), problems
    kh.update(repo)
    problems = kh.check(repo)
    assert problems == [f"README.md's table row naming `kernels/pool2d.cu` has the status 'verified on an H100'; "
                        f"it must say {kh.CHANGED!r} (from {kh.RECORD})"]
    _set_readme_status(repo, "kernels/pool2d.cu", kh.CHANGED)
    assert kh.check(repo) == []
    # a "verified" status for a changed source is refused even if the README agrees
    record = json.loads((repo / kh.RECORD).read_text())
    record["sources"]["kernels/pool2d.cu"]["status"] = "verified on an H100"
    (repo / kh.RECORD).write_text(json.dumps(record))
    assert any(f"should be {kh.CHANGED!r}" in p for p in kh.check(repo))


def test_a_changed_header_marks_the_kernels_including_it(repo):
    header = repo / "kernels" / "common.cuh"
    verified = {k for k, v in kh.load_record(repo)["sources"].items() if v.get("verified_sha256")}
    header.write_text(header.read_text() + "\n// an edit\n")
    kh.update(repo)
    statuses = {k: v["status"] for k, v in kh.load_record(repo)["sources"].items()}
    # sources never run on a GPU keep their status: only verified ones become "changed"
    assert {k for k, s in statuses.items() if s == kh.CHANGED} == {
        f"kernels/{p.name}" for p in (repo / "kernels").glob("*.cu*")
        if re.search(r'#\s*include\s+"common.cuh"', p.read_text()) or p.name == "common.cuh"} & verified
    assert len([p for p in kh.check(repo) if "README.md's table row" in p]) >= 5


def test_a_new_kernel_is_compiled_and_emulated_not_yet_run(repo):
    (repo / "kernels" / "conv2d_tensorcore.cu").write_text('#include "common.cuh"\n')
    assert any("kernels/conv2d_tensorcore.cu has no entry" in p and kh.NOT_RUN in p for p in kh.check(repo))
    kh.update(repo)
    entry = kh.load_record(repo)["sources"]["kernels/conv2d_tensorcore.cu"]
    assert entry["status"] == kh.NOT_RUN and entry["verified_sha256"] is None
    assert kh.check(repo) == [f"README.md's table under {kh.TABLE_HEADING!r} has no row naming "
                              f"`kernels/conv2d_tensorcore.cu`: add one with the status {kh.NOT_RUN!r}"]
    text = (repo / kh.README).read_text().replace(
        "\n\n## Next", f"\n| tensor-core conv | `kernels/conv2d_tensorcore.cu` | v1 | {kh.NOT_RUN} |\n\n## Next", 1)
    (repo / kh.README).write_text(text)
    assert kh.check(repo) == []
    # after a passing GPU check it becomes verified there
    kh.update(repo, verified_by="bench/results/gpu-h200-x", gpu="an H200", commit="abc1234")
    entry = kh.load_record(repo)["sources"]["kernels/conv2d_tensorcore.cu"]
    assert entry["status"] == "verified on an H200" and entry["verified_by"] == "bench/results/gpu-h200-x"


def test_fused_formulas_are_hashed_with_their_launchers_not_docstrings():
    text = (ROOT / kh.FUSED).read_text()
    base = kh.fused_formulas(text)
    assert {"_ADAM", "_SGD_MOMENTUM", "_BN_BACKWARD"} <= set(base)
    edited = kh.fused_formulas(text.replace("m = m * beta1 + one_minus_beta1 * gg;",
                                            "m = m * beta1 + gg;"))
    assert edited["_ADAM"] != base["_ADAM"] and edited["_SGD_MOMENTUM"] == base["_SGD_MOMENTUM"]
    launcher = kh.fused_formulas(text.replace("lr / bias_correction1", "lr * bias_correction1"))
    assert launcher["_ADAM"] != base["_ADAM"]  # the host-side constants are part of the formula
    doc = kh.fused_formulas(text.replace('"""Adam (decoupled=False)', '"""The Adam (decoupled=False)'))
    assert doc == base
