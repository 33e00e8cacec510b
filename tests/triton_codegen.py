"""Compiles the Triton LSQ kernels ahead of time for sm_80 and sm_90, no GPU needed, and prints
per variant what the machine code shows: registers and spills (ptxas -v), 16-byte loads and
stores, IEEE division, and the round-half-to-even constant (not folded away). Run in a process
without TRITON_INTERPRET (tests/test_triton_codegen.py does that):

    python tests/triton_codegen.py        # a JSON list, one object per kernel variant
"""

import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lsq_fast._triton import lsq

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

FWD = ["x_ptr", "y_ptr", "step_ptr", "n_rows", "n_cols", "channels", "qmin", "qmax"]
BWD = ["grad_y_ptr", "x_ptr", "step_ptr", "grad_x_ptr", "partial_ptr", "grad_step_ptr", "grad_scale",
       "n_rows", "n_cols", "channels", "qmin", "qmax"]

# (kernel, runtime args, data dtype, constexprs, warps): the variants the size classes launch.
VARIANTS = [
    (lsq._lsq_forward_kernel, FWD, "fp32", dict(STEP_MODE=0, BLOCK_R=1, BLOCK_C=4096, ONE_ROW=True), 8),
    (lsq._lsq_forward_kernel, FWD, "bf16", dict(STEP_MODE=0, BLOCK_R=1, BLOCK_C=4096, ONE_ROW=True), 8),
    (lsq._lsq_forward_kernel, FWD, "fp32", dict(STEP_MODE=1, BLOCK_R=1, BLOCK_C=4096, ONE_ROW=False), 8),
    (lsq._lsq_forward_kernel, FWD, "fp32", dict(STEP_MODE=2, BLOCK_R=64, BLOCK_C=64, ONE_ROW=False), 8),
    (lsq._lsq_backward_kernel, BWD, "fp32", dict(STEP_MODE=0, BLOCK_R=1, BLOCK_C=4096, ONE_ROW=True, FINAL=False), 8),
    (lsq._lsq_backward_kernel, BWD, "bf16", dict(STEP_MODE=0, BLOCK_R=1, BLOCK_C=4096, ONE_ROW=True, FINAL=False), 8),
    (lsq._lsq_backward_kernel, BWD, "fp32", dict(STEP_MODE=1, BLOCK_R=1, BLOCK_C=8192, ONE_ROW=False, FINAL=True), 16),
    (lsq._lsq_backward_kernel, BWD, "fp32", dict(STEP_MODE=2, BLOCK_R=64, BLOCK_C=64, ONE_ROW=False, FINAL=False), 8),
]


def signature(args, dtype):
    sig = {}
    for name in args:
        if name.endswith("_ptr"):
            sig[name] = "*fp32" if name in ("step_ptr", "partial_ptr", "grad_step_ptr") else f"*{dtype}"
        else:
            sig[name] = "fp64" if name == "grad_scale" else "i32"
    return sig


def report(kernel, args, dtype, constexprs, warps, capability):
    sig = signature(args, dtype)
    sig.update({name: "constexpr" for name in constexprs})
    # As Triton specializes at launch: pointers from the caching allocator and row lengths that
    # are multiples of 16 are known to be 16-aligned.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if name.endswith("_ptr") or name == "n_cols"}
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": warps},
    )
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    verbose = subprocess.run([PTXAS, f"-arch={arch}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    return {
        "kernel": kernel.__name__,
        "dtype": dtype,
        "constexprs": constexprs,
        "num_warps": warps,
        "sm": capability,
        "registers": int(re.search(r"Used (\d+) registers", verbose.stderr).group(1)),
        "spill_bytes": sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", verbose.stderr)),
        "vector_loads": len(re.findall(r"ld\.global[.\w:]*\.v[24]\.", ptx)),
        "vector_stores": len(re.findall(r"st\.global[.\w:]*\.v[24]\.", ptx)),
        "ieee_divides": len(re.findall(r"div\.rn\.f32", ptx)),
        "approximate_divides": len(re.findall(r"div\.(?:full|approx)\.f32", ptx)),
        "round_constant_adds": len(re.findall(r"add\.f32\s+%r\d+, %r\d+, 0f4B400000", ptx)),
    }


if __name__ == "__main__":
    rows = [report(*variant, capability) for capability in (80, 90) for variant in VARIANTS]
    print(json.dumps(rows))
