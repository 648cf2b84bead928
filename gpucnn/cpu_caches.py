"""The data cache sizes of this machine's first CPU (Linux sysfs), for the
CPU kernels' blocking: L1_BYTES and L2_BYTES (per core). Elsewhere, or when
sysfs does not say, the sizes of the cores the blockings were first tuned on
(48 KiB and 1 MiB)."""
import re
from pathlib import Path

_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _parse_size(text):
    """'2048K' -> 2097152; None if it is not a size."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text.upper())
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


def data_cache_bytes(level, sysfs=_SYSFS):
    """The size of the level-`level` data (or unified) cache of cpu0, or None."""
    try:
        indexes = sorted(sysfs.glob("index*"))
        for index in indexes:
            if (index / "level").read_text().strip() == str(level) \
                    and (index / "type").read_text().strip() in ("Data", "Unified"):
                return _parse_size((index / "size").read_text())
    except OSError:
        return None
    return None


L1_BYTES = data_cache_bytes(1) or 48 << 10
L2_BYTES = data_cache_bytes(2) or 1 << 20
