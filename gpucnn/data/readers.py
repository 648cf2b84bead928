"""Readers for the on-disk dataset formats: IDX (MNIST family), CIFAR-10 python
batches and .npz archives. Each returns raw NumPy arrays and checks what it
reads; every error names the file and what was expected.
"""
import gzip
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

# IDX header: two zero bytes, a type code, the number of dimensions, then one
# big-endian uint32 per dimension. MNIST-style files hold unsigned bytes.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_IMAGES_MAGIC = 0x00000803  # ubyte, 3 dims (count, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # ubyte, 1 dim (count)
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path):
    """File contents, transparently gunzipped (detected by the gzip magic, not the name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return raw


def read_idx(path, expected_magic=None):
    """An IDX file (gzip or raw) as a NumPy array of its declared shape.

    expected_magic: the 4-byte magic number the caller expects (e.g.
    IDX_IMAGES_MAGIC); a different one is a ValueError. The payload must hold
    exactly prod(dims) elements: fewer means truncated, more means corrupt.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, expected a 4-byte magic number)")
    magic = struct.unpack(">I", raw[:4])[0]
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    zero, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (magic number 0x{magic:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing data"
        raise ValueError(f"{path}: IDX payload {what}: {got} bytes, expected {expected} for shape {dims}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_images(path):
    """(N, rows, cols) uint8 images from an IDX3 file."""
    return read_idx(path, IDX_IMAGES_MAGIC)


def read_idx_labels(path):
    """(N,) uint8 labels from an IDX1 file."""
    return read_idx(path, IDX_LABELS_MAGIC)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickling runs code named by the file; this one only lets through what a
    CIFAR-10 batch needs: plain containers (built in by the pickle opcodes),
    NumPy arrays and dtypes, and bytes (`_codecs.encode`, used for bytes by
    protocol-2 pickles). Any other global is refused before it is called."""
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only NumPy arrays allowed)")
        return super().find_class(module, name)


def read_cifar10_batch(path):
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one CIFAR-10 python batch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected a CIFAR-10 python batch)")
    with open(path, "rb") as f:
        head = f.read(2)
        if len(head) < 2 or head[0] != 0x80:  # CIFAR's batches are protocol-2 pickles: PROTO opcode first
            raise ValueError(f"{path}: not a CIFAR-10 python batch (not a pickle of protocol 2 or later; "
                             f"starts with {head!r})")
        f.seek(0)
        try:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
        except (EOFError, pickle.UnpicklingError) as exc:
            if isinstance(exc, EOFError) or "truncated" in str(exc):
                raise ValueError(f"{path}: truncated CIFAR-10 python batch (the pickle ends early)") from exc
            raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
        except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: expected keys 'data' and 'labels', got {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected uint8 data of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels


def read_npz(path):
    """The arrays of an .npz archive (loaded with allow_pickle=False); needs 'x' and 'y'."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected an .npz with arrays 'x' and 'y')")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
        if not is_zip:
            raise ValueError(f"{path}: not an .npz archive (no zip header); expected an .npz with arrays "
                             f"'x' and 'y' (numpy.savez)")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"{path}: truncated or corrupt .npz archive ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read as .npz without pickles ({exc})") from exc
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise ValueError(f"{path}: expected arrays 'x' and 'y', missing {sorted(missing)} (has {sorted(arrays)})")
    for prefix in ("", "_test"):
        x, y = arrays.get("x" + prefix), arrays.get("y" + prefix)
        if x is not None and (y is None or len(x) != len(y)):
            raise ValueError(f"{path}: 'x{prefix}' has {len(x)} samples but 'y{prefix}' has "
                             f"{'none' if y is None else len(y)}")
    return arrays
