"""NumPy-compatible functional ops: NumPy in, NumPy out; CuPy in, CuPy out.

The contract (names, argument order, argmax encoding, padding semantics,
errors) is in docs/design.md; conv.py and pool.py document it and the math.
"""
from ._args import output_size, output_shape, transposed_output_size
from .conv import (conv1d, conv2d, conv3d,
                   conv1d_backward_data, conv2d_backward_data, conv3d_backward_data,
                   conv1d_backward_filter, conv2d_backward_filter, conv3d_backward_filter,
                   conv_backward_bias,
                   conv_transpose1d, conv_transpose2d, conv_transpose3d,
                   conv_transpose1d_backward_data, conv_transpose2d_backward_data,
                   conv_transpose3d_backward_data,
                   conv_transpose1d_backward_filter, conv_transpose2d_backward_filter,
                   conv_transpose3d_backward_filter)
from .conv_fused import conv2d_bias_relu, conv2d_bias_relu_backward
from .pool import (max_pool1d, max_pool2d, max_pool3d,
                   max_pool1d_backward, max_pool2d_backward, max_pool3d_backward,
                   avg_pool1d, avg_pool2d, avg_pool3d,
                   avg_pool1d_backward, avg_pool2d_backward, avg_pool3d_backward,
                   adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d,
                   adaptive_avg_pool1d_backward, adaptive_avg_pool2d_backward, adaptive_avg_pool3d_backward,
                   adaptive_max_pool1d, adaptive_max_pool2d, adaptive_max_pool3d,
                   adaptive_max_pool1d_backward, adaptive_max_pool2d_backward, adaptive_max_pool3d_backward)
