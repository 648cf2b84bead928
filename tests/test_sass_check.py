"""python -m gpucnn.devtools.kernel_check --sass: the SASS main-loop instruction mix
(gpucnn.devtools.sass_check), on a synthetic listing and on a real nvcc build."""
import pytest

from gpucnn import kernel_loader
from gpucnn.devtools import kernel_check, sass_check

LISTING = """
        code for sm_90
                Function : k_two_loops
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   IMAD R2, R0, R3, RZ ;
        /*0020*/                   FFMA R4, R5, R6, R4 ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   LDGSTS [R7], desc[UR4][R8.64] ;
        /*0050*/                   LDS R9, [R10] ;
        /*0060*/                   HMMA.1688.F32.TF32 R12, R16, R20, R12 ;
        /*0070*/                   HMMA.1688.F32.TF32 R24, R16, R22, R24 ;
        /*0080*/                   IADD3 R7, R7, 0x4, RZ ;
        /*0090*/              @!P1 BRA 0x40 ;
        /*00a0*/                   EXIT ;
                Function : k_straight
        /*0000*/                   FADD R1, R2, R3 ;
        /*0010*/                   EXIT ;
"""


def test_parse_and_main_loop_on_a_listing():
    kernels = sass_check.parse_sass(LISTING)
    assert set(kernels) == {"k_two_loops", "k_straight"}
    assert kernels["k_two_loops"][5] == (0x50, "LDS", " R9, [R10] ")
    assert sass_check.main_loop(kernels["k_two_loops"]) == (0x40, 0x90)   # the HMMA loop, not the FFMA one
    mix = sass_check.loop_mix(kernels["k_two_loops"])
    assert mix == {"loop": "0x40-0x90", "instructions": 6, "math_share": round(2 / 6, 3), "div": 0,
                   "mma": 2, "fma": 0, "int": 1, "lds": 1, "ldg": 1, "other": 1}
    assert [sass_check.is_division(o) for o in ("I2F.U32.RP", "I2F.RP", "CALL.REL.NOINC", "I2F.F64", "IMAD")] \
        == [True, True, True, False, False]
    assert sass_check.loop_mix(kernels["k_straight"])["loop"] is None


@pytest.mark.skipif(kernel_check.find_nvcc() is None or sass_check.find_cuobjdump() is None,
                    reason="needs nvcc and cuobjdump")
def test_sass_report_of_the_tensor_core_kernels():
    path = kernel_loader.kernel_dir() / "conv2d_tc.cu"
    assert kernel_check.scalar_variants(path) == (None,)
    rows, problems = kernel_check.check(("sm_80",), [path], sass=True)
    assert problems == []
    by_name = {r["kernel"]: r for r in rows}
    directions = ("forward", "backward_data", "backward_filter")
    assert set(by_name) == {f"conv2d_{d}_{p}_v{v}" for d in directions for p in ("tf32", "bf16", "3xtf32")
                            for v in (3, 4)}
    for name, row in by_name.items():   # one main loop, no integer division in it
        assert row["mma"] > 0 and row["loop"] and row["spill_stores"] == 0 and row["div"] == 0, name
    # per 16-deep tile, 2x4 (v3) or 4x4 (v4) mma tiles a warp: 2 k8-steps of TF32, 1 k16-step of BF16
    for d in directions:
        assert by_name[f"conv2d_{d}_tf32_v3"]["mma"] == 16 and by_name[f"conv2d_{d}_tf32_v4"]["mma"] == 32
        assert by_name[f"conv2d_{d}_bf16_v3"]["mma"] == 8 and by_name[f"conv2d_{d}_bf16_v4"]["mma"] == 16
    assert "HMMA" in " ".join(sass_check.CLASSES["mma"])
    table = sass_check.format_table(rows)
    assert "conv2d_forward_bf16_v3" in table and "math%" in table
