"""Backend switches (in the spirit of torch.backends.cudnn).

    gpucnn.backends.autotune = True     # or GPUCNN_AUTOTUNE=1 in the environment

autotune (default off, like cudnn.benchmark): with version=None, the first
GPU convolution of each (op, shapes, dtype, precision, GPU name) times every
kernel version that the precision permits and keeps the fastest, in memory
and in a JSON file under the user's cache directory (see
gpucnn.functional._autotune), so later processes skip the timing. With it off
the version is a fixed function of the shapes, dtype and precision
(_gpu_launch.select_version): the same inputs always run the same kernel.
"""
import os

autotune = os.environ.get("GPUCNN_AUTOTUNE", "").strip() == "1"
