"""Reading one input image from a file for `gpucnn predict`, into the layout
and scale the model was trained on: float32 (C, H, W) in [0, 1].

- PNG, JPEG and whatever else Pillow opens (gpucnn[images]): converted to the
  training channels (grayscale "L" for 1 channel, "RGB" for 3; colour images
  become grayscale by Pillow's ITU-R 601-2 luma, transparency is dropped),
  resized with bilinear filtering when the size differs from the training
  size, then 8-bit pixels / 255, the datasets' own scaling.
- .npy (read with allow_pickle=False): (H, W) or (C, H, W) with exactly the
  training shape (arrays are not resized or converted: a different shape is
  an error); integer arrays are 8-bit pixels scaled by 1/255, float arrays
  are taken as already in [0, 1].
Normalization (the training mean/std) comes after this, from the model's metadata.
A file that cannot be read or has the wrong shape raises ValueError naming it.
"""
import os

import numpy as np

from .data.datasets import _to_float_nchw  # the datasets' own uint8 -> [0, 1] conversion

PILLOW_MODES = {1: "L", 3: "RGB"}


class MissingPillowError(ImportError):
    """Pillow is needed for image files and is not installed."""


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingPillowError("reading PNG/JPEG images needs Pillow: pip install 'gpucnn[images]'") from exc
    return Image


def _read_npy(path, input_shape):
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc
    c, h, w = input_shape
    if array.ndim == 2 and c == 1:
        array = array[None]
    if tuple(array.shape) != tuple(input_shape):
        raise ValueError(f"{path}: array of shape {tuple(array.shape)}; the model takes ({c}, {h}, {w})"
                         + (f" or ({h}, {w})" if c == 1 else ""))
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{path}: expected numbers, got an array of {array.dtype}")
    return _to_float_nchw(array[None], path)[0]


def _read_picture(path, input_shape):
    image_module = _pillow()
    c, h, w = input_shape
    if c not in PILLOW_MODES:
        raise ValueError(f"{path}: the model takes {c}-channel inputs; image files give 1 or 3 channels "
                         f"(pass a .npy array instead)")
    try:
        with image_module.open(path) as image:
            image = image.convert(PILLOW_MODES[c])
    except (OSError, ValueError, image_module.DecompressionBombError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    if image.size != (w, h):
        image = image.resize((w, h), image_module.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return _to_float_nchw(pixels.reshape(h, w, c).transpose(2, 0, 1)[None], path)[0]


def read_image(path, input_shape):
    """float32 (C, H, W) in [0, 1] for a model trained on `input_shape` images."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    if path.lower().endswith(".npy"):
        return _read_npy(path, tuple(input_shape))
    return _read_picture(path, tuple(input_shape))
