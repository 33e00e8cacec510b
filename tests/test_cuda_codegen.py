"""The CUDA kernels as a GPU would run them, checked without one: every source in csrc/cuda
compiled by the machine's nvcc for sm_80 and sm_90 with setup.py's flags and torch's C++ standard
(tests/cuda_codegen.py), and once more, for sm_90, with the other standard.
Every instantiation is checked: forward, straight-through backward and the arctan soft-round
backward (LG-LSQ, docs/contract.md, section 4), each in every element type, pack width and kernel kind.
No kernel may spill or keep a stack frame (local memory); the float math must be IEEE division
and round-to-nearest-even; the wide kernels must move 16-byte (or 8-byte) packs. The torch
binding, built only where torch has CUDA, is compiled here with -fsyntax-only against the CPU
wheel's headers. Without nvcc these tests skip, except in CI (CI=true), where they fail."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import cuda_codegen

ROOT = Path(__file__).resolve().parent.parent


def _need_nvcc():
    try:
        cuda_codegen.toolkit()
    except cuda_codegen.toolkit_error() as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs nvcc to compile-check the CUDA kernels: {err}")
        pytest.skip(f"no CUDA toolkit: {err}")


@pytest.fixture(scope="module")
def kernels():
    _need_nvcc()
    return cuda_codegen.compile_all()


def _template_args(kernel: str) -> list[str]:
    return [a.strip() for a in kernel.split("<", 1)[1].rstrip(">").split(",")]


def _variant(kernel: str) -> str:
    """'forward', 'ste' or 'soft_round' for the elementwise kernels (rows: <T, VEC, backward,
    per_row, soft_round>, cols and groups: <T, VEC, backward, soft_round>), 'partials' for the
    combine."""
    if kernel.startswith("lsq_sum_partials_kernel"):
        return "partials"
    args = _template_args(kernel)
    if args[2] == "false":
        assert args[-1] == "false", kernel  # the forward keeps the hard round
        return "forward"
    return "soft_round" if args[-1] == "true" else "ste"


def test_every_kernel_compiles_for_ampere_and_hopper(kernels):
    names = {(k["sm"], k["kernel"].split("<")[0]) for k in kernels}
    for sm in (80, 90):
        assert {(sm, "lsq_rows_kernel"), (sm, "lsq_cols_kernel"), (sm, "lsq_groups_kernel"),
                (sm, "lsq_sum_partials_kernel")} <= names
    for dtype in ("float", "__half", "__nv_bfloat16", "double"):
        for variant in ("forward", "ste", "soft_round"):
            found = [k for k in kernels
                     if _template_args(k["kernel"])[0] == dtype and _variant(k["kernel"]) == variant]
            # sm x pack x kind (cols, groups, rows per tensor, rows per row)
            assert len(found) == 2 * 2 * 4, (dtype, variant)


def test_soft_round_only_in_its_own_instantiations(kernels):
    """The soft round's slope (a floor, cvt.rmi, and a second IEEE division per element) is
    in the soft-round backward kernels, and nowhere else: the straight-through path is its own
    instantiation, compiled as before."""
    for k in kernels:
        if _variant(k["kernel"]) == "soft_round":
            assert k["floors"] > 0 and k["ieee_divides"] >= 2 * k["floors"], k
        else:
            assert k.get("floors", 0) == 0, k


def test_no_spills_and_no_stack_frame(kernels):
    for k in kernels:
        assert (k["stack_frame"], k["spill_stores"], k["spill_loads"]) == (0, 0, 0), k
        assert k["registers"] <= 64, k  # __launch_bounds__(256, 4): four blocks resident per SM


def test_ieee_division_and_round_half_to_even(kernels):
    for k in kernels:
        if "partials" in k["kernel"]:
            continue
        assert k["ieee_divides"] > 0 and k["approximate_divides"] == 0, k
        assert k["nearest_even_rounds"] > 0, k


def test_wide_kernels_move_packs(kernels):
    for k in kernels:
        if "partials" not in k["kernel"] and int(k["kernel"].split(",")[1]) > 1:
            assert k["wide_loads"] > 0 and k["wide_stores"] > 0, k


def test_kernels_compile_as_cxx17_and_cxx20():
    """The build takes torch's C++ standard (17 in torch 2.11, 20 from 2.13); the fixture above
    compiled the kernels with this torch's, so here the other one, for Hopper only."""
    _need_nvcc()
    other = {17: 20, 20: 17}[cuda_codegen.torch_cxx_standard()]
    for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        done = subprocess.run([cuda_codegen.nvcc(), *cuda_codegen.nvcc_flags(std=other), "-arch=sm_90", "-c",
                               str(source), "-o", os.devnull], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-4000:]


def test_binding_compiles_against_torch_headers(tmp_path):
    """csrc/cuda/lsq_cuda_ops.cpp, as BuildExtension would compile it (torch's C++ standard),
    syntax only: the CPU
    wheel ships c10/cuda's headers but not the one CMake generates, stubbed here."""
    _need_nvcc()
    from torch.utils.cpp_extension import include_paths

    cuda_include = cuda_codegen.cuda_include()
    assert (cuda_include / "cuda_runtime_api.h").exists(), cuda_include
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    includes = [f"-isystem{p}" for p in include_paths()] + [f"-isystem{cuda_include}", f"-isystem{tmp_path}"]
    done = subprocess.run(
        [compiler, f"-std=c++{cuda_codegen.torch_cxx_standard()}", "-fsyntax-only", "-Wall", "-Werror", f"-I{ROOT / 'csrc'}", *includes,
         str(ROOT / "csrc" / "cuda" / "lsq_cuda_ops.cpp")],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
