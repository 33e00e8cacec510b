"""Build lsq_fast's C++ (and, where torch has CUDA, CUDA) operator library.

Install with ``pip install --no-build-isolation .`` against an installed torch: an isolated
build would fetch a second torch. The library registers its ops with the dispatcher when it
is loaded (``lsq_fast/_ops.py`` loads it through ``torch.ops.load_library``); it has no
Python module of its own.

Where torch is a CUDA build, the CUDA kernels are built too, with the toolkit that
tools/torch_toolchain.py finds (CUDA_HOME, else the toolkit of the nvcc on PATH, through links
and wrapper scripts, else /usr/local/cuda); a missing toolkit, missing headers or a CUDA major
other than torch's stop the build with a message that says how to proceed.

The C++ standard is torch's, which BuildExtension adds for g++ and nvcc alike (C++17 in torch
2.11, C++20 from 2.13, whose headers need it); the sources compile under both.

Environment:
  LSQ_FAST_NO_CUDA=1        build the CPU kernels only, even where torch has CUDA.
  CUDA_HOME=...             the CUDA toolkit to build with (found automatically otherwise).
  TORCH_CUDA_ARCH_LIST=...  CUDA architectures (default below; never probed from a visible GPU).
"""

import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

import torch
import torch.utils.cpp_extension as cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# A100 and H100/H200, what the project measures on, as machine code; and sm_90's PTX, which the
# driver JIT-compiles on any newer GPU (Blackwell's sm_100/sm_120), so that the first
# backend="cuda" call there runs instead of failing with "no kernel image is available".
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
# Beside torch's own nvcc flags (cpp_extension.COMMON_NVCC_FLAGS) and its -std. Never
# -use_fast_math: the kernels' IEEE division and rounding are spelled as intrinsics, but
# subnormals must be kept. tests/cuda_codegen.py compiles the kernels with these same flags.
NVCC_FLAGS = ["-O3", "-lineinfo"]  # -lineinfo: compute-sanitizer names source lines


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def load_toolchain():
    """tools/torch_toolchain.py, by path: pip runs this file with no guarantee that its folder
    is on sys.path. (Registered in sys.modules first, as its dataclass needs.)"""
    if "lsq_fast_torch_toolchain" not in sys.modules:
        path = os.path.join(ROOT, "tools", "torch_toolchain.py")
        spec = importlib.util.spec_from_file_location("lsq_fast_torch_toolchain", path)
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["lsq_fast_torch_toolchain"]


def want_cuda():
    """Whether to build the CUDA kernels: decided by torch and the toolkit, never by whether a
    GPU happens to be visible while building. Points torch's CUDA_HOME at the toolkit found."""
    if os.environ.get("LSQ_FAST_NO_CUDA", "0") == "1" or torch.version.cuda is None or not sources("csrc/cuda/*.cu"):
        return False
    toolchain = load_toolchain()
    try:
        toolkit = toolchain.find_cuda_toolkit(torch.version.cuda)
    except toolchain.ToolkitError as err:
        raise SystemExit(f"lsq_fast: cannot build the CUDA kernels for torch {torch.__version__}: {err}") from None
    print(f"lsq_fast: building the CUDA kernels with the {toolkit.describe()}")
    # cpp_extension reads its module-level CUDA_HOME (guessed at import) whenever it needs nvcc,
    # the headers or the libraries.
    os.environ["CUDA_HOME"] = cpp_extension.CUDA_HOME = str(toolkit.home)
    return True


def extension():
    cxx_flags = [
        "-O3",
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
        package_data={"lsq_fast.ops": ["backend_table.json"]},  # backend="auto" on CUDA tensors
        python_requires=">=3.10",
        install_requires=["torch>=2.6"],  # torch.library.triton_op / wrap_triton
        extras_require={
            "triton": ["triton>=3.2"],  # backend="triton"; CUDA builds of torch bring it
            "test": ["pytest>=8", "numpy<2.4"],  # numpy<2.4: Triton 3.6's CPU interpreter
            # the benchmarks' charts (matplotlib) and progress bars (tqdm)
            "bench": ["pytest-benchmark>=4", "matplotlib>=3.7", "tqdm>=4.60"],
            # The benchmark's peers (benchmarks/peers.py); install beside a pinned torch
            # (pip install "torch==<yours>" ".[peers]"), or pip may pull another torch.
            "peers": ["torchao>=0.13", "brevitas>=0.11", "nncf>=2.16"],
            # lsq_fast.export_onnx, and its tests in onnxruntime (same advice: pin torch beside it)
            "export": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
            # examples/qat_digits.py: sklearn's digits (they ship inside it) and its plot
            "examples": ["scikit-learn>=1.3", "matplotlib>=3.7"],
        },
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        zip_safe=False,
    )
