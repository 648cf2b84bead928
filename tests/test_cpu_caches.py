"""gpucnn.cpu_caches: cache sizes read from a (fake) sysfs tree."""
import pytest

from gpucnn import cpu_caches


def _index(root, i, level, kind, size):
    d = root / f"index{i}"
    d.mkdir()
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_reads_the_data_and_unified_levels(tmp_path):
    _index(tmp_path, 0, 1, "Data", "48K")
    _index(tmp_path, 1, 1, "Instruction", "32K")
    _index(tmp_path, 2, 2, "Unified", "2048K")
    _index(tmp_path, 3, 3, "Unified", "105M")
    assert cpu_caches.data_cache_bytes(1, tmp_path) == 48 << 10
    assert cpu_caches.data_cache_bytes(2, tmp_path) == 2 << 20
    assert cpu_caches.data_cache_bytes(3, tmp_path) == 105 << 20


def test_unknown_when_missing_or_unreadable(tmp_path):
    assert cpu_caches.data_cache_bytes(2, tmp_path / "absent") is None
    _index(tmp_path, 0, 1, "Instruction", "32K")
    _index(tmp_path, 1, 2, "Unified", "a lot")
    assert cpu_caches.data_cache_bytes(1, tmp_path) is None   # only an instruction cache
    assert cpu_caches.data_cache_bytes(2, tmp_path) is None   # not a size


@pytest.mark.parametrize("text, size", [("512", 512), ("1024K", 1 << 20), (" 2M\n", 2 << 20), ("1G", 1 << 30)])
def test_parse_size(text, size):
    assert cpu_caches._parse_size(text) == size


def test_module_sizes_are_plausible():
    assert 8 << 10 <= cpu_caches.L1_BYTES <= 1 << 20
    assert cpu_caches.L1_BYTES < cpu_caches.L2_BYTES <= 64 << 20
