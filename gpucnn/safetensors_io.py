"""State dicts as .safetensors files (the `safetensors` package's NumPy API),
the format PyTorch, JAX and Hugging Face tools read and write.

A safetensors file is an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, byte range) and the raw tensor bytes: it holds only
arrays, so reading it never executes code (no pickle anywhere). gpucnn's
state_dict keys are already PyTorch's ('0.weight', '1.running_mean',
'1.num_batches_tracked'), so a file written here loads with
safetensors.torch.load_file into a torch module of the same architecture,
and the other way round.

    save_file(state, path)   a flat {str: array} dict (NumPy or CuPy), written atomically
    load_file(path)          -> {str: NumPy array} (in the saved order)
    is_safetensors(path)     sniffs the header (gpucnn.load uses it)
"""
import json
import os
import struct

import numpy as np

from . import backend

SUFFIX = ".safetensors"
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
KEY_ORDER = "gpucnn.key_order"   # header metadata: the saved dict's key order (JSON list)


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError as exc:
        raise ImportError("safetensors files need the safetensors package: pip install 'gpucnn[export]' "
                          "(or pip install safetensors)") from exc
    return safetensors.numpy


def is_safetensors(path):
    """True when the file starts like a safetensors file (header length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length <= _MAX_HEADER and head[8:9] == b"{"


def save_file(state, path, write_atomically):
    """Write a flat {name: array} dict; `write_atomically(path, bytes)` does the I/O."""
    if not isinstance(state, dict):
        raise TypeError(f"gpucnn.save(format='safetensors'): expected a dict, got {type(state).__name__}")
    arrays = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"gpucnn.save(format='safetensors'): keys must be strings, got {key!r}")
        if not (isinstance(value, (np.ndarray, np.generic)) or backend.is_gpu_array(value)):
            raise TypeError(f"gpucnn.save(format='safetensors'): {key!r} is a {type(value).__name__}; a "
                            f"safetensors file holds only arrays (a flat state dict). Save nested or "
                            f"non-array values (optimizer state, checkpoints) with format='npz'")
        arrays[key] = np.require(backend.to_cpu(value), requirements="C")  # keeps 0-d arrays 0-d
    # the library lays tensors out by dtype and name; the header's metadata keeps the dict's order
    metadata = {"format": "pt", KEY_ORDER: json.dumps(list(arrays))}
    write_atomically(path, _safetensors().save(arrays, metadata=metadata))


def load_file(path):
    """{name: NumPy array} from a .safetensors file, in the saved dict's order
    when gpucnn wrote it, else in the order of the data in the file."""
    from .serialization import SerializationError
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        arrays = _safetensors().load_file(os.fspath(path))
    except ImportError:
        raise
    except Exception as exc:  # includes the Rust reader's SafetensorError
        raise SerializationError(f"gpucnn.load: {os.fspath(path)!r} is not a readable safetensors file "
                                 f"(truncated or corrupt): {type(exc).__name__}: {exc}") from exc
    metadata = header.pop("__metadata__", None) or {}
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    try:
        saved = json.loads(metadata.get(KEY_ORDER, "[]"))
    except ValueError:
        saved = []
    if sorted(saved) == sorted(order):
        order = saved
    return {k: arrays[k] for k in order}
