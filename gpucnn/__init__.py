"""gpucnn: a CNN framework with hand-written CUDA kernels and a NumPy/Numba CPU path.

    gpucnn.functional   conv/pool ops (NumPy in, NumPy out; CuPy in, CuPy out)
    gpucnn.nn           layers, losses, initializers (layer-wise backprop)
    gpucnn.optim        torch.optim-compatible optimizers and LR schedules
    gpucnn.trainer      Trainer / fit
    gpucnn.save / load  state dicts in a format that never executes code (.npz or .safetensors)
    gpucnn.load_model   a trained model with its inference metadata (gpucnn.inference)
    gpucnn.onnx.export  a model as an ONNX graph
    gpucnn.asarray      NumPy/CuPy arrays from any DLPack array (PyTorch, JAX), zero-copy
    gpucnn.set_float32_conv_precision / float32_conv_precision   (docs/precision.md)
    gpucnn.amp          mixed precision: autocast policy, GradScaler (docs/gpu-step.md)
"""
from . import _process_env  # noqa: F401  (first: before NumPy loads OpenBLAS)
from . import amp, backend, backends, functional, onnx, random
from .backend import asarray, get_array_module, gpu_available, to_cpu, to_gpu
from .inference import load_model
from .precision import (float32_conv_precision, get_float32_conv_precision,
                        set_float32_conv_precision)
from .random import manual_seed
from .serialization import load, load_checkpoint, save, save_checkpoint

__version__ = "0.1.0"
