"""The Triton kernels (LSQ, LSQ+, QIL) as a GPU would run them, checked without one: compiled
ahead of time for sm_80 and sm_90 (tests/triton_codegen.py), the machine code must show no
register spills, 16-byte loads and stores, IEEE division only, the round-half-to-even constant
intact, LSQ's soft-round backward compiled in where asked for, and forwards whose products are
never contracted with the following add into an FMA."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

FORWARDS = {"_lsq_forward_kernel", "_lsq_plus_forward_kernel", "_qil_forward_kernel"}
BACKWARDS = {"_lsq_backward_kernel", "_lsq_plus_backward_kernel", "_qil_backward_kernel"}
ELEMENTWISE = FORWARDS | BACKWARDS  # one pass over x (and grad_y): 16-byte accesses expected
# Kernels whose math rounds half to even (QIL's backward is straight-through: no round). All
# variants compute in float32 (bf16 data included): the constant checked is float32's.
ROUNDING = FORWARDS | {"_lsq_backward_kernel", "_lsq_plus_backward_kernel"}
DIVIDING = ELEMENTWISE  # u = x / s, or QIL's interval 0.5 / d; the partial sums divide nothing


@pytest.fixture(scope="module")
def codegen():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, don't interpret
    script = Path(__file__).with_name("triton_codegen.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"ahead-of-time compilation failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def variants(codegen):
    return [v for v in codegen if not v["control"]]


def test_every_kernel_compiles_for_ampere_and_hopper(variants):
    assert {v["sm"] for v in variants} == {80, 90}
    assert {v["kernel"] for v in variants} == ELEMENTWISE | {"_qil_sum_partials_kernel"}
    for kernel in ELEMENTWISE:
        assert {v["dtype"] for v in variants if v["kernel"] == kernel} == {"fp32", "bf16"}, kernel


def test_no_spills(variants):
    for v in variants:
        assert v["stack_bytes"] == 0 and v["local_bytes"] == 0, v  # a spill store needs a stack frame
        assert v["registers"] <= 128, v  # leaves room for 4+ warps x 4 blocks per SM


def test_ieee_division_and_exact_rounding(variants):
    for v in variants:
        assert v["approximate_divides"] == 0, v
        if v["kernel"] in DIVIDING:
            assert v["ieee_divides"] > 0, v
        if v["kernel"] in ROUNDING and v["dtype"] != "fp64":  # float64 math would add 1.5 * 2^52 instead
            assert v["round_constant_adds"] > 0, v  # (v + 1.5*2^23) - 1.5*2^23 was not folded away


def test_wide_memory_accesses(variants):
    for v in variants:
        if v["kernel"] in ELEMENTWISE:
            assert v["wide_loads"] > 0 and v["wide_stores"] > 0, v  # 16 bytes a thread at once


def test_lsq_backward_round_switch(variants):
    """SOFT_ROUND compiles the arctan slope in (frac(u) takes a floor; the products are mul.rn),
    the straight-through backward has none of it."""
    backward = [v for v in variants if v["kernel"] == "_lsq_backward_kernel"]
    assert {v["constexprs"]["SOFT_ROUND"] for v in backward} == {False, True}
    for v in backward:
        if v["constexprs"]["SOFT_ROUND"]:
            assert v["floors"] > 0 and v["mul_rn_f32"] > 0, v
        else:
            assert v["floors"] == 0 and v["mul_rn_f32"] == 0, v


def test_forward_products_are_not_contracted(codegen, variants):
    """The reference multiplies, then adds, rounding twice (LSQ+'s s * round(u) + beta, QIL's
    alpha * x + beta): an FMA would round once. The control, a plain x * x + x compiled the same
    way, shows that the count catches a contraction; the FMAs of libdevice's log2f (flush-to-zero,
    QIL's z^gamma) are the logarithm's own, not a contraction of the reference's operations."""
    controls = [v for v in codegen if v["control"]]
    assert controls and all(v["fma_f32"] > 0 for v in controls), controls
    for v in variants:
        if v["kernel"] in FORWARDS:
            assert v["fma_f32"] == 0, v
        if v["kernel"] in {"_lsq_plus_forward_kernel", "_qil_forward_kernel"}:
            assert v["mul_rn_f32"] > 0, v  # tile_math.mul_rn's inline PTX survived


def test_size_classes_launch_power_of_two_warps():
    """Triton compiles only num_warps that are powers of two ("num_warps must be a power of 2"):
    every size class's warps, as tiles.pick_tile launches them, must be one."""
    from lsq_fast._triton import tiles

    sizes = [*range(1, tiles.SINGLE_PROGRAM_MAX + 2), tiles.MEDIUM_MAX, tiles.MEDIUM_MAX + 1]
    bad = {n: tiles.size_class(n) for n in sizes if tiles.size_class(n)[1] & (tiles.size_class(n)[1] - 1)}
    assert not bad, f"(elements, warps) not launchable for {len(bad)} sizes, e.g. {dict(list(bad.items())[:3])}"
