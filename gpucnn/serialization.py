"""gpucnn.save / gpucnn.load and training checkpoints, in a format that never
executes code on load.

File format: an .npz archive (a zip of .npy members, as numpy.savez writes)
read back with allow_pickle=False.
- Each array in the saved object is one member, named by its path: the keys
  from the top down joined by '/' (integer keys in decimal), so
  np.load(path)['model/conv1.weight'] or ['optimizer/state/0/exp_avg'] works.
  A name already taken (keys 1 and '1' side by side) gets '~2', '~3', ...
- The member '__gpucnn__' is a 0-d string array holding JSON:
  {"format": "gpucnn", "version": 1, "tree": node} where a node is
  {"a": member} an array, {"s": member} a NumPy scalar (kept with its dtype),
  {"v": value} None, bool, int, float or str (JSON; big ints exact),
  {"d": [[key, node], ...]} a dict (str or int keys, order kept),
  {"l": [nodes]} a list, {"t": [nodes]} a tuple.
Loading returns NumPy arrays (CuPy arrays are saved from host copies).
Writes are atomic: a temporary file in the target's folder, fsync, then
os.replace, so a crash never leaves a half-written file under the name.
A missing file raises FileNotFoundError; a truncated, foreign or
pickle-bearing file raises SerializationError (a ValueError); both name the
file, and the message says what the file is instead (empty, text, a Python
pickle, a single .npy array, a PyTorch zip, a truncated zip, an .npz without
the manifest, a manifest naming a missing member); "pickled" is said only of
a real pickle.
"""
import contextlib
import json
import os
import tempfile
import zipfile

import numpy as np

from . import backend, safetensors_io
from . import random as grandom

MANIFEST = "__gpucnn__"
FORMAT, VERSION = "gpucnn", 1
CHECKPOINT_FORMAT = "gpucnn-checkpoint"


class SerializationError(ValueError):
    """A file that cannot be read as a gpucnn file."""


def _member_name(path, members):
    base = "/".join(str(k) for k in path) or "_"
    name, n = base, 1
    while name in members or name == MANIFEST:
        n += 1
        name = f"{base}~{n}"
    return name


def _encode(obj, path, members):
    """JSON node for `obj`; arrays go into `members`."""
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        name = _member_name(path, members)
        members[name] = np.asarray(obj)
        return {"s": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    if isinstance(obj, np.ndarray) or backend.is_gpu_array(obj):
        array = backend.to_cpu(obj)
        if array.dtype.hasobject:
            raise TypeError(f"gpucnn.save: object arrays cannot be saved safely (at {'/'.join(map(str, path))})")
        name = _member_name(path, members)
        members[name] = array
        return {"a": name}
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"gpucnn.save: dict keys must be str or int, got {key!r} "
                                f"(at {'/'.join(map(str, path)) or 'top level'})")
            items.append([key, _encode(value, path + (key,), members)])
        return {"d": items}
    if isinstance(obj, (list, tuple)):
        nodes = [_encode(v, path + (i,), members) for i, v in enumerate(obj)]
        return {"t": nodes} if isinstance(obj, tuple) else {"l": nodes}
    raise TypeError(f"gpucnn.save: cannot save a {type(obj).__name__} "
                    f"(at {'/'.join(map(str, path)) or 'top level'}); use arrays, numbers, "
                    f"strings, None, and dicts/lists/tuples of them")


def _decode(node, arrays):
    (kind, value), = node.items()
    if kind == "v":
        return value
    if kind == "a":
        return arrays[value]
    if kind == "s":
        return arrays[value][()]
    if kind == "d":
        return {key: _decode(child, arrays) for key, child in value}
    if kind in ("l", "t"):
        items = [_decode(child, arrays) for child in value]
        return tuple(items) if kind == "t" else items
    raise KeyError(f"unknown node kind {kind!r}")


def _atomic_write(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path, data):
    """Write `data` to `path` atomically (see the module docstring): the old file
    stays whole if the write fails (disk full, killed)."""
    _atomic_write(os.fspath(path), lambda f: f.write(data))


def write_text_atomic(path, text):
    """A text file written atomically, as the checkpoints are."""
    atomic_write_bytes(path, text.encode())


# Leading bytes of formats a gpucnn file is mistaken for (checked in order).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_PROTOCOL = b"\x80"  # protocol 2+ pickles (torch.save's legacy format) start with PROTO


def _not_a_zip(path):
    """Why the file at `path` is not a gpucnn archive, from its first bytes, or
    None when it starts like a zip (the zip reader then judges the rest)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "is empty (0 bytes; an interrupted copy?)"
    if head.startswith(_ZIP_MAGIC):
        return None
    if head.startswith(_NPY_MAGIC):
        return "is a single .npy array (numpy.save), not a gpucnn .npz archive"
    if head[:1] == _PICKLE_PROTOCOL and len(head) > 1 and 2 <= head[1] <= 5:
        return ("is a pickled Python object (a pickle file, e.g. torch.save's legacy format); gpucnn never "
                "unpickles, because loading a pickle can run code")
    try:
        head.decode("utf-8")
        return f"is a text file (starts with {head[:40].decode('utf-8')!r}), not a gpucnn .npz archive"
    except UnicodeDecodeError:
        return f"is not a zip/.npz archive (first bytes {head[:8].hex(' ')})"


def save(obj, path, format=None):
    """Save a dict (a state_dict, an optimizer state, a checkpoint) to `path`
    (written as given; no suffix is added). format: "npz" (gpucnn's format,
    any nesting), "safetensors" (a flat state dict, readable by PyTorch; see
    safetensors_io) or None: safetensors when the path ends in .safetensors."""
    if format is None:
        format = "safetensors" if os.fspath(path).endswith(safetensors_io.SUFFIX) else "npz"
    if format == "safetensors":
        return safetensors_io.save_file(obj, path, atomic_write_bytes)
    if format != "npz":
        raise ValueError(f"gpucnn.save: format must be 'npz' or 'safetensors', got {format!r}")
    if not isinstance(obj, dict):
        raise TypeError(f"gpucnn.save: expected a dict, got {type(obj).__name__}")
    path = os.fspath(path)
    members = {}
    tree = _encode(obj, (), members)
    members[MANIFEST] = np.array(json.dumps({"format": FORMAT, "version": VERSION, "tree": tree}))

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in members.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)

    _atomic_write(path, write)


def load(path):
    """Read a file written by `save` (either format, told apart by its first
    bytes) -> dict (NumPy arrays, Python values)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gpucnn.load: no such file: {path!r}")
    if safetensors_io.is_safetensors(path):
        return safetensors_io.load_file(path)
    what = _not_a_zip(path)
    if what:
        raise SerializationError(f"gpucnn.load: {path!r} {what}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if MANIFEST not in npz.files:
                names = sorted(npz.files)
                kind = ("a PyTorch zip file (torch.save)" if any(n.endswith("data.pkl") for n in names)
                        else f"an .npz/zip archive with members {names[:5]}{' ...' if len(names) > 5 else ''}")
                raise SerializationError(f"gpucnn.load: {path!r} is {kind}, not a gpucnn file (it has no "
                                         f"{MANIFEST!r} manifest; gpucnn.save writes one)")
            manifest = json.loads(str(npz[MANIFEST][()]))
            if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
                raise SerializationError(f"gpucnn.load: {path!r} has format {manifest.get('format')!r} "
                                         f"version {manifest.get('version')!r}; expected {FORMAT!r} {VERSION}")
            arrays = {name: npz[name] for name in npz.files if name != MANIFEST}
        try:
            return _decode(manifest["tree"], arrays)
        except KeyError as exc:
            raise SerializationError(f"gpucnn.load: {path!r} is a gpucnn file whose manifest names member "
                                     f"{exc} that the archive lacks (truncated or edited)") from exc
    except SerializationError:
        raise
    except ValueError as exc:
        # NumPy refuses object arrays (stored as pickles) when allow_pickle=False.
        if "allow_pickle" in str(exc):
            raise SerializationError(f"gpucnn.load: {path!r} holds pickled Python objects; refusing to "
                                     f"load them (gpucnn files never execute code)") from exc
        raise SerializationError(f"gpucnn.load: {path!r} is a zip archive with a corrupt member: {exc}") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise SerializationError(f"gpucnn.load: {path!r} starts like a zip archive but is truncated or "
                                 f"corrupt ({type(exc).__name__}: {exc}); an interrupted copy? gpucnn's own "
                                 f"writes are atomic") from exc
    except (OSError, KeyError, TypeError, AttributeError) as exc:
        raise SerializationError(f"gpucnn.load: {path!r} is a corrupt gpucnn archive: "
                                 f"{type(exc).__name__}: {exc}") from exc


def save_checkpoint(path, model, optimizer=None, epoch=None, scheduler=None, extra=None):
    """A training checkpoint: {'format', 'epoch', 'model' (state_dict),
    'optimizer', 'scheduler' (their state_dicts or None), 'rng' (the state of
    gpucnn.random's global generator), 'extra' (e.g. the loss history)}."""
    save({
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng": grandom.get_state(),
        "extra": extra,
    }, path)


CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "rng", "extra")


def read_checkpoint(path):
    """A save_checkpoint file as a dict, checked to be a training checkpoint
    with all its keys (nothing is restored: callers can compare its 'extra'
    with what they are about to build first)."""
    state = load(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise SerializationError(f"load_checkpoint: {os.fspath(path)!r} is a gpucnn file but not a training "
                                 f"checkpoint (format {state.get('format')!r}; use gpucnn.load for a plain "
                                 f"state_dict)")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise SerializationError(f"load_checkpoint: {os.fspath(path)!r} is a gpucnn checkpoint missing the "
                                 f"key(s) {missing}")
    return state


def load_checkpoint(path, model, optimizer=None, scheduler=None, restore_rng=True, strict=True):
    """Restore what save_checkpoint wrote into `model` (and `optimizer`,
    `scheduler`, the global RNG) -> {'epoch': ..., 'extra': ...}."""
    state = read_checkpoint(path)
    model.load_state_dict(state["model"], strict=strict)
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is not None:
            if state[name] is None:
                raise SerializationError(f"load_checkpoint: {os.fspath(path)!r} holds no {name} state")
            target.load_state_dict(state[name])
    if restore_rng:
        grandom.set_state(state["rng"])
    return {"epoch": state["epoch"], "extra": state["extra"]}
