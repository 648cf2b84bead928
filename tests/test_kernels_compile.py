"""The CUDA sources compile cleanly, and the launchers' kernel names match them.

Compiling needs nvcc (skipped without it), not a GPU: this is what CI can say
about the kernels, which are compiled here but not run.
"""
import re

import pytest

from gpucnn import kernel_loader
from gpucnn.devtools import kernel_check, sass_check
from gpucnn.functional import _gpu_launch, adaptive_pool_gpu, conv3d_gpu, conv_gpu, pool3d_gpu, pool_gpu

NAME = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)+_v\d+$")   # <op>_<direction>_v<N>
LAUNCHERS = (conv_gpu, pool_gpu, conv3d_gpu, pool3d_gpu, adaptive_pool_gpu)
needs_nvcc = pytest.mark.skipif(kernel_check.find_nvcc() is None, reason="nvcc not found")
# Files whose v2 kernels keep integer division out of their main loops (checked in
# the SASS when cuobjdump is at hand; bench/results/sass-simt-v2-tables-2026-12-02.txt).
DIVISION_FREE_V2 = ("conv2d_forward.cu", "conv2d_backward.cu")


def _extern_c_kernels(text):
    return set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?'
                          r"(\w+)\s*\(", text))


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("path", kernel_loader.kernel_files(), ids=lambda p: p.name)
def test_kernel_file_compiles_without_warnings_or_spills(path, arch):
    sass = path.name in DIVISION_FREE_V2 and sass_check.find_cuobjdump() is not None
    rows, problems = kernel_check.check((arch,), [path], sass=sass)
    assert problems == []
    assert rows, f"{path.name}: no kernel reported"
    for row in rows:
        assert row["registers"] is not None and row["spill_stores"] == 0 and row["spill_loads"] == 0
        if sass and row["kernel"].endswith("_v2"):   # issue 10: no integer division in the main loop
            assert row["div"] == 0 and row["loop"], (row["kernel"], row["scalar"], row["div"])


@pytest.mark.parametrize("module", LAUNCHERS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_launcher_kernel_names_exist_and_follow_the_scheme(module):
    files = set(module.KERNELS.values())
    defined = {f: _extern_c_kernels(kernel_loader.read_source(f)) for f in files}
    for name, filename in module.KERNELS.items():
        assert NAME.match(name), name
        assert name in defined[filename], f"{name} is not an extern \"C\" __global__ in {filename}"
    # no kernel in these files that no launcher uses
    used = {n for m in LAUNCHERS for n in m.KERNELS}
    for filename, names in defined.items():
        assert names <= used, f"unused kernels in {filename}: {names - used}"


def test_every_version_has_its_kernels():
    for direction, versions in conv_gpu.VERSIONS.items():
        for v in versions:
            if v in conv_gpu.TENSOR_CORE:   # one kernel per precision
                names = conv_gpu.TC_KERNELS[direction][v].values()
                assert len(names) == 3 and all(n in conv_gpu.KERNELS and n.endswith(f"_v{v}") for n in names)
            else:
                assert f"conv2d_{direction}_v{v}" in conv_gpu.KERNELS
    for op, versions in pool_gpu.VERSIONS.items():
        kind, direction = op.split("_")
        for v in versions:
            assert f"{kind}_pool2d_{direction}_v{v}" in pool_gpu.KERNELS
    assert "max_pool2d_backward_route_v1" in pool_gpu.KERNELS


def test_read_source_inlines_common_header():
    for filename in ("conv2d_forward.cu", "conv2d_backward.cu", "pool2d.cu"):
        text = kernel_loader.read_source(filename)
        assert '#include "common.cuh"' not in text
        assert "// ---- begin common.cuh" in text and "#define GPUCNN_COMMON_CUH" in text
        assert text.count("#define GPUCNN_COMMON_CUH") == 1


def test_parse_ptxas_reads_the_resource_lines():
    text = ("ptxas info    : Compiling entry function 'k_fwd_v2' for 'sm_90'\n"
            "ptxas info    : Function properties for k_fwd_v2\n"
            "    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
            "ptxas info    : Used 97 registers, used 1 barriers, 8448 bytes smem\n"
            "ptxas info    : Compiling entry function 'k_fwd_v1' for 'sm_90'\n"
            "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
            "ptxas info    : Used 31 registers, used 0 barriers, 424 bytes cmem[0]\n")
    a, b = kernel_check.parse_ptxas(text)
    assert (a["kernel"], a["registers"], a["smem"], a["stack"], a["spill_stores"], a["spill_loads"]) \
        == ("k_fwd_v2", 97, 8448, 16, 8, 4)
    assert (b["kernel"], b["registers"], b["smem"], b["spill_stores"]) == ("k_fwd_v1", 31, 0, 0)


@pytest.mark.parametrize("K, crs, kgemm", [(1, 1, 1), (64, 576, 128 * 28 * 28), (3, 27, 17),
                                          (512, 4608, 2 * 7 * 7), (1, 9, 10**7), (200, 90, 16 * 5)])
def test_filter_split_covers_kgemm_with_nonempty_chunks(K, crs, kgemm):
    splits, chunk = conv_gpu.filter_split(K, crs, kgemm)
    assert 1 <= splits <= kernel_loader.MAX_GRID_Y
    assert chunk % _gpu_launch.TILE_K == 0
    assert (splits - 1) * chunk < kgemm <= splits * chunk


# The SIMT versions (resolve_version's default; select_version adds the
# tensor-core ones by precision: tests/test_precision.py).
SIMT = {op: tuple(v for v in vs if v not in conv_gpu.TENSOR_CORE) for op, vs in conv_gpu.VERSIONS.items()}


def test_resolve_version():
    assert _gpu_launch.resolve_version(SIMT, "forward", None) == 2
    assert _gpu_launch.resolve_version(conv_gpu.VERSIONS, "backward_filter", 1) == 1
    with pytest.raises(ValueError, match="forward"):
        _gpu_launch.resolve_version(conv_gpu.VERSIONS, "forward", max(conv_gpu.VERSIONS["forward"]) + 1)


def test_resolve_version_picks_v1_for_few_gemm_rows():
    # version=None: v1 below AUTO_V1_ROWS GEMM rows (measured faster on an H100),
    # v2 from there on; an explicit version always wins; pools only have v1.
    rows = _gpu_launch.AUTO_V1_ROWS
    assert _gpu_launch.resolve_version(conv_gpu.VERSIONS, "backward_data", None, gemm_rows=3) == 1
    assert _gpu_launch.resolve_version(SIMT, "forward", None, gemm_rows=rows - 1) == 1
    assert _gpu_launch.resolve_version(SIMT, "forward", None, gemm_rows=rows) == 2
    assert _gpu_launch.resolve_version(conv_gpu.VERSIONS, "backward_data", 2, gemm_rows=3) == 2
    assert _gpu_launch.resolve_version(conv3d_gpu.VERSIONS, "backward_filter", None) == 1
