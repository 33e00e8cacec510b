"""Every instruction set the CPU kernels are built for gives the same forward and grad_x bits,
for every quantizer (LSQ and its soft-round gradient, LSQ+, QIL). One exception: QIL weights with
an exponent gamma != 1 take z^gamma from each build's pow (std::pow in the default build, SLEEF's
in the AVX ones, as torch itself does), which may differ in the last bit; there the outputs may
differ where x_t * q sits at a rounding tie, and the gradients in the last bits.

The kernel table is picked once per process, so each ISA runs in a subprocess capped with
LSQ_FAST_CPU_ISA. Parameter gradients may differ in the last bits (the lane count sets the
order of the float32 partial sums): each ISA's is held to the contract's bound of the exact sum.
"""

import os
import subprocess
import sys

import pytest
import torch

from lsq_oracle import Bound, assert_grad_within, lsq_plus_bounds, lsq_step_bound, qil_oracle

SCRIPT = r"""
import sys, torch, lsq_fast
torch.manual_seed(int(sys.argv[2]))
out = {"isa": lsq_fast.cpu_isa()}
cases = [((4, 3, 50, 33), None), ((64, 3, 3, 3), 0), ((4, 24, 9, 9), 1), ((37, 101), 1)]
for i, (shape, axis) in enumerate(cases):
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        c = 1 if axis is None else shape[axis]
        step = torch.rand(c, dtype=torch.float64 if dtype == torch.float64 else torch.float32) * 0.3 + 0.01
        x = (torch.randn(shape) * 2).to(dtype)
        if len(shape) == 4 and i == 2:
            x = x.contiguous(memory_format=torch.channels_last)
        gy = torch.randn(shape).to(dtype)
        inputs = [x, step, gy, axis]
        y = torch.ops.lsq_fast.lsq_forward(x, step, -8, 7, axis, None)
        gx, gs = torch.ops.lsq_fast.lsq_backward(gy, x, step, -8, 7, axis, None)
        out[(i, str(dtype))] = (y, gx, gs)
        gx, gs = torch.ops.lsq_fast.lsq_backward(gy, x, step, -8, 7, axis, None, 4.0)
        out[(i, str(dtype), "arctan")] = (y, gx, gs)
        offset = -step * torch.rand_like(step) * 4
        out[("inputs", i, str(dtype))] = inputs + [offset]
        y = torch.ops.lsq_fast.lsq_plus_forward(x, step, offset, 0, 15, axis, None)
        gx, gs, gb = torch.ops.lsq_fast.lsq_plus_backward(gy, x, step, offset, 0, 15, axis, None)
        out[(i, str(dtype), "lsq+")] = (y, gx, torch.cat([gs, gb]))
        c, d = (torch.tensor([v], dtype=step.dtype) for v in (0.9, 0.8))
        for gamma in (None, torch.tensor([0.75], dtype=step.dtype)):
            y = torch.ops.lsq_fast.qil_forward(x, c, d, gamma, 7, True)
            grads = torch.ops.lsq_fast.qil_backward(gy, x, c, d, gamma, 7, True)
            out[(i, str(dtype), "qil", gamma is None)] = (y, grads[0], torch.cat(grads[1:]))
        y = torch.ops.lsq_fast.qil_forward(x, c, d, None, 15, False)
        grads = torch.ops.lsq_fast.qil_backward(gy, x, c, d, None, 15, False)
        out[(i, str(dtype), "qil-act")] = (y, grads[0], torch.cat(grads[1:]))
torch.save(out, sys.argv[1])
"""


def run_with_isa(isa, path, seed):
    env = dict(os.environ, LSQ_FAST_CPU_ISA=isa)
    subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(seed)], env=env, check=True)
    return torch.load(path, weights_only=False)


def parameter_bound(key, out) -> Bound:
    """The exact parameter gradients of the case `key` (as SCRIPT concatenates them) and their bound."""
    x, step, gy, axis, offset = out[("inputs", key[0], key[1])]
    kind = key[2] if len(key) > 2 else "ste"
    if kind in ("ste", "arctan"):
        return lsq_step_bound(x, step, gy, 4, True, axis, soft_round_k=4.0 if kind == "arctan" else None)
    if kind == "lsq+":
        bounds = lsq_plus_bounds(x, step, offset, gy, 4, False, axis).values()
    else:
        c, d = (torch.tensor([v], dtype=step.dtype) for v in (0.9, 0.8))
        weight, no_gamma = kind == "qil", kind == "qil-act" or key[3]
        gamma = None if no_gamma else torch.tensor([0.75], dtype=step.dtype)
        qil = qil_oracle(x, c, d, gamma, gy, weight)[1]
        zero = Bound(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
        bounds = [qil["center"], qil["distance"], zero if no_gamma else qil["gamma"]]  # no exponent: exact zeros
    return Bound(torch.cat([b.exact for b in bounds]), torch.cat([b.bound for b in bounds]))


def test_instruction_sets_agree(tmp_path, seed):
    results = {}
    for isa in ("default", "avx2", "avx512"):
        out = run_with_isa(isa, tmp_path / f"{isa}.pt", seed)
        if out.pop("isa") == isa:  # capped to a lower one where the CPU lacks it
            results[isa] = out
    assert "default" in results
    if len(results) == 1:
        pytest.skip("this CPU runs only the default kernels")
    base = results["default"]
    for isa, out in results.items():
        for key, (y, gx, gs) in ((k, v) for k, v in out.items() if k[0] != "inputs"):
            if key[2:] == ("qil", False):  # gamma != 1: each build's pow
                assert (y != base[key][0]).float().mean() < 1e-3, f"{isa} forward differs from default on {key}"
                # a last-bit difference in float32 can move a float16/bfloat16 grad_x by one ulp
                rtol = max(1e-5, 2 * torch.finfo(gx.dtype).eps)
                torch.testing.assert_close(gx, base[key][1], rtol=rtol, atol=1e-6)
            else:
                assert torch.equal(y, base[key][0]), f"{isa} forward differs from default on {key}"
                assert torch.equal(gx, base[key][1]), f"{isa} grad_x differs from default on {key}"
            assert_grad_within(gs, parameter_bound(key, base), f"{isa} parameter gradients on {key}")


def test_unknown_isa_is_a_clear_error():
    env = dict(os.environ, LSQ_FAST_CPU_ISA="sse9")
    proc = subprocess.run([sys.executable, "-c", "import lsq_fast; lsq_fast.cpu_isa()"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "LSQ_FAST_CPU_ISA=sse9" in proc.stderr
