"""Test infrastructure: CPU emulation of gpucnn's CUDA kernels (index math,
bounds, barriers); not a substitute for a GPU run, compute-sanitizer or NVRTC.
build.py compiles the kernels with g++ and sanitizers, device.py makes the
GPU launchers run on that build; tests/test_kernels_emulated.py uses both."""
from . import build
from .build import find_cxx, sanitizers_work
from .device import DeviceArray, EmulatedDevice, EmulatorError
