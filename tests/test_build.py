"""What the build put in the library, as the dispatcher sees it: every kernel the sources
register is there, every op has CPU, Meta (fake) and, for the differentiable ones, Autograd
kernels. In the CUDA-build leg of CI (`make check-cuda-build`, LSQ_FAST_EXPECT_CUDA=1: a CUDA
build of torch, no GPU, lsq_fast installed from a copy of the tree), also the CUDA kernels of
every op that csrc/cuda registers, "cuda" and "triton" among the CUDA backends, the default
architectures (sm_80, sm_90 and sm_90's PTX), and that the package imported is the installed
one. None of this touches a GPU."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

import lsq_fast
from lsq_fast.ops.library import ops  # noqa: F401  (loads the library)

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EXPECT_CUDA = os.environ.get("LSQ_FAST_EXPECT_CUDA") == "1"


def _source_text() -> str:
    return "\n".join(p.read_text() for p in sorted(CSRC.rglob("*.cpp")))


def declared_ops() -> dict[str, str]:
    """{op name: schema} of every m.def in TORCH_LIBRARY(lsq_fast, m)."""
    schemas = re.findall(r'm\.def\(\s*"((\w+)\(.*?\) -> [^"]+)"', _source_text(), re.S)
    return {name: schema for schema, name in schemas}


def registered_kernels() -> dict[str, set[str]]:
    """{dispatch key: op names} of every TORCH_LIBRARY_IMPL(lsq_fast, KEY, m) block in csrc/."""
    kernels: dict[str, set[str]] = {}
    for key, body in re.findall(r"TORCH_LIBRARY_IMPL\(lsq_fast,\s*(\w+),\s*m\)\s*\{(.*?)\n\}", _source_text(), re.S):
        kernels.setdefault(key, set()).update(re.findall(r'm\.impl\("(\w+)"', body))
    return kernels


def has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"lsq_fast::{op}", key)


def tensor_ops() -> list[str]:
    return [name for name, schema in declared_ops().items() if "Tensor" in schema]


def test_sources_are_parsed():
    """The parsers above find what the sources hold (so the checks below are not vacuous)."""
    assert {"lsq_forward", "lsq_backward", "lsq_plus_forward", "qil_backward"} <= set(declared_ops())
    kernels = registered_kernels()
    assert set(kernels) >= {"CPU", "Autograd", "CUDA"}, kernels
    assert set(kernels["CPU"]) == set(tensor_ops())


@pytest.mark.parametrize("key", ["CPU", "Meta"])
def test_every_op_has_cpu_and_meta_kernels(key):
    missing = [op for op in tensor_ops() if not has_kernel(op, key)]
    assert not missing, f"no {key} kernel for {missing}"


def test_every_forward_op_has_an_autograd_kernel():
    forwards = [op for op in tensor_ops() if op.endswith("_forward")]
    assert forwards and set(forwards) <= registered_kernels()["Autograd"]
    missing = [op for op in forwards if not has_kernel(op, "Autograd")]
    assert not missing, f"no Autograd kernel for {missing}"


def test_cuda_kernels_of_every_op_csrc_cuda_registers():
    if not EXPECT_CUDA:
        if torch.version.cuda is None:
            pytest.skip("a CPU build of torch: no CUDA kernels to build")
        if not lsq_fast.ops.backends.has_cuda_kernels():
            pytest.skip("lsq_fast was built without its CUDA kernels (LSQ_FAST_NO_CUDA=1?)")
    cuda_ops = {op for key, names in registered_kernels().items() if key == "CUDA" for op in names}
    missing = sorted(op for op in cuda_ops if not has_kernel(op, "CUDA"))
    assert not missing, f"csrc/cuda registers CUDA kernels for {missing}, but the library has none"
    assert lsq_fast.ops.backends.has_cuda_kernels()
    assert {"cuda", "triton"} <= set(lsq_fast.available_backends("cuda"))


def _cuobjdump() -> Path | None:
    """Triton ships NVIDIA's cuobjdump (the CUDA toolkit may not: these machines' lacks it)."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return path if path.exists() else None


@pytest.mark.skipif(not EXPECT_CUDA, reason="the CUDA-build leg only (make check-cuda-build)")
def test_cuda_build_leg_is_what_it_says():
    """A CUDA torch, the installed package (not the source tree), and setup.py's default
    architectures in the library: sm_80 and sm_90 machine code, and sm_90's PTX, which the
    driver compiles for any newer GPU."""
    assert torch.version.cuda is not None
    package = Path(lsq_fast.__file__).resolve().parent
    assert package != ROOT / "lsq_fast", f"imported the source tree, not the installed package: {package}"
    (library,) = package.glob("_C*.so")
    cuobjdump = _cuobjdump()
    assert cuobjdump is not None, "no cuobjdump to list the library's CUDA code (Triton ships one)"
    listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", library], capture_output=True, text=True,
                             check=True).stdout
    assert set(re.findall(r"ELF file\s+\d+: \S+\.(sm_\d+)\.cubin", listing)) == {"sm_80", "sm_90"}, listing
    assert set(re.findall(r"PTX file\s+\d+: \S+\.(sm_\d+)\.ptx", listing)) == {"sm_90"}, listing
