"""Build lsq_fast's C++ (and, where torch has CUDA, CUDA) operator library.

Install with ``pip install --no-build-isolation .`` against an installed torch: an isolated
build would fetch a second torch. The library registers its ops with the dispatcher when it
is loaded (``lsq_fast/_ops.py`` loads it through ``torch.ops.load_library``); it has no
Python module of its own.

Environment:
  LSQ_FAST_NO_CUDA=1        build the CPU kernels only, even where torch has CUDA.
  TORCH_CUDA_ARCH_LIST=...  CUDA architectures (default below; never probed from a visible GPU).
"""

import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"  # A100 and H100/H200: what the project measures on.
# Beside torch's own nvcc flags (cpp_extension.COMMON_NVCC_FLAGS). Never -use_fast_math: the
# kernels' IEEE division and rounding are spelled as intrinsics, but subnormals must be kept.
# tests/cuda_codegen.py compiles the kernels with these same flags to check their registers.
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo"]  # -lineinfo: compute-sanitizer names source lines


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def want_cuda():
    if os.environ.get("LSQ_FAST_NO_CUDA", "0") == "1":
        return False
    # Decided by the toolchain, not by whether a GPU happens to be visible while building.
    return torch.version.cuda is not None and CUDA_HOME is not None and bool(sources("csrc/cuda/*.cu"))


def extension():
    cxx_flags = [
        "-O3",
        "-std=c++17",
        "-fopenmp",  # at::parallel_for is OpenMP inline code in torch's headers
        # One rounding per operation: no fused multiply-add contraction, so every instruction
        # set computes the same per-element values (y and grad_x to the bit).
        "-ffp-contract=off",
        "-fno-math-errno",
        "-Wno-unknown-pragmas",  # torch headers carry CUDA-style `#pragma unroll`
        "-Wno-psabi",  # vectors passed between our own internal functions only
    ]
    cpp = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        cuda = sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
        return CUDAExtension(
            "lsq_fast._C",
            cpp + cuda,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": NVCC_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "lsq_fast._C",
        cpp,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


# Guarded so that tests/cuda_codegen.py can import NVCC_FLAGS (pip runs this file as __main__).
if __name__ == "__main__":
    setup(
        name="lsq_fast",
        version="0.1.0",
        description="Fused kernels for Learned Step Size Quantization (LSQ) and its relatives",
        packages=find_packages(include=["lsq_fast", "lsq_fast.*"]),
        package_data={"lsq_fast": ["backend_table.json"]},  # backend="auto" on CUDA tensors
        python_requires=">=3.10",
        install_requires=["torch>=2.6"],  # torch.library.triton_op / wrap_triton
        extras_require={
            "triton": ["triton>=3.2"],  # backend="triton"; CUDA builds of torch bring it
            "test": ["pytest>=8", "numpy<2.4"],  # numpy<2.4: Triton 3.6's CPU interpreter
            "bench": ["pytest-benchmark>=4"],
        },
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        zip_safe=False,
    )
