"""The one global random generator behind every random choice gpucnn makes.

Weight initialization, dropout masks and data shuffling all draw from this
NumPy generator, so `gpucnn.manual_seed(seed)` makes a CPU run bitwise
reproducible, and `get_state()` / `set_state()` let a training checkpoint
resume with the very same random stream.

On a GPU, dropout masks come from a CuPy generator that is itself seeded from
this one (see `device_generator`); such runs are repeatable for one seed, but
the CuPy stream is not part of `get_state()`. (This path ran in the GPU
training runs on an H100, bench/results/gpu-h100-2026-11-24/.)
"""
import numpy as np

_generator = np.random.default_rng()
_device_generators = {}  # array module -> its generator, seeded from _generator


def manual_seed(seed):
    """Reseed the global generator (and forget any device generator)."""
    global _generator
    _generator = np.random.default_rng(seed)
    _device_generators.clear()


def generator():
    """The global NumPy generator (draw from it; do not keep a reference
    across `manual_seed`, which replaces it)."""
    return _generator


def device_generator(xp):
    """A generator for arrays of module `xp`: the global one for NumPy; for
    CuPy a `xp.random.default_rng` seeded once from the global generator."""
    if xp is np:
        return _generator
    if xp not in _device_generators:
        _device_generators[xp] = xp.random.default_rng(int(_generator.integers(2 ** 63)))
    return _device_generators[xp]


def get_state():
    """The global generator's state: a dict of plain Python values (the
    bit generator's name and integers), safe to store with gpucnn.save."""
    return _generator.bit_generator.state


def set_state(state):
    """Restore a state from `get_state()` (device generators are reseeded
    from the restored stream on their next use)."""
    global _generator
    name = state.get("bit_generator") if isinstance(state, dict) else None
    bit_generator_class = getattr(np.random, str(name), None)
    if not (isinstance(bit_generator_class, type)
            and issubclass(bit_generator_class, np.random.BitGenerator)):
        raise TypeError(f"set_state: not a NumPy bit generator state: {state!r}")
    bit_generator = bit_generator_class()
    bit_generator.state = state
    _generator = np.random.Generator(bit_generator)
    _device_generators.clear()
