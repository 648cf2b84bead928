from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
IMAGES = ["pillow>=9"]                                           # gpucnn predict on PNG/JPEG files
EXPORT = ["onnx>=1.14", "onnxruntime>=1.16", "safetensors>=0.4"]  # ONNX export, .safetensors weights

setup(
    name="gpucnn",
    version="0.1.0",
    description="A CNN framework with hand-written CUDA conv/pool kernels and a NumPy/Numba CPU path",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # kernels/ (top level, as the user asked) ships inside the package as
    # gpucnn/_kernels so that a non-editable install finds the .cu sources.
    packages=find_packages(include=["gpucnn", "gpucnn.*"]) + ["gpucnn._kernels"],
    package_dir={"gpucnn._kernels": "kernels"},
    package_data={"gpucnn._kernels": ["*.cu", "*.cuh"]},
    install_requires=["numpy>=1.23", "numba>=0.57", "threadpoolctl>=3", "tqdm>=4.60", "matplotlib>=3.5"],
    extras_require={
        # CuPy wheels are per CUDA major version: `gpu` is CUDA 13, `gpu-cuda12` CUDA 12.
        "gpu": ["cupy-cuda13x>=13", "nvidia-nccl-cu13"],
        "gpu-cuda12": ["cupy-cuda12x>=13"],
        "images": IMAGES,
        "export": EXPORT,
        # setuptools>=70.1 (bdist_wheel built in) and wheel: tests/test_packaging.py builds a
        # wheel without build isolation; a fresh venv has only Python's bundled setuptools.
        # mpi4py + mpich: tests/test_distributed.py runs mpiexec -n 2 and -n 3 (binary wheels).
        # images/export/ml-dtypes: the tests of predict, ONNX, safetensors and bf16 rounding run in CI
        # rather than skip.
        "dev": ["pytest>=7", "scikit-learn>=1.1", "setuptools>=70.1", "wheel", "hypothesis>=6",
                "mpi4py>=4.1", "mpich", "ml-dtypes"] + IMAGES + EXPORT,
        # Data-parallel training (docs/distributed.md): `distributed` is mpi4py for a cluster's own
        # MPI; `mpi` adds the mpich wheel (mpiexec in the venv, no compiler needed).
        "distributed": ["mpi4py>=4.1"],
        "mpi": ["mpi4py>=4.1", "mpich"],
    },
    entry_points={"console_scripts": ["gpucnn=gpucnn.cli:main"]},
)
