"""Developer tools, not needed to train or use a model:

    python -m gpucnn.devtools.gpu_check        the GPU check of one GPU session (make gpu-check)
    python -m gpucnn.devtools.sanitizer_driver every kernel version on small shapes, for compute-sanitizer
    python -m gpucnn.devtools.kernel_check     nvcc resource report per kernel, --sass instruction mix (make kernels)
    python -m gpucnn.devtools.kernel_hashes    the "verified on a GPU" record by content hash
    sass_check                                 the SASS instruction-mix reader behind kernel_check --sass
"""
