"""Compiles the Triton kernels (LSQ, LSQ+, QIL) ahead of time for sm_80 and sm_90, no GPU
needed, and prints per variant what the machine code shows: registers and local memory (the
cubin's resource usage, as Triton's own ptxas built it: a spill needs a stack frame), 16-byte
loads and stores, IEEE division, the round-half-to-even constant (not folded away), float32
FMAs, the explicit mul.rn products and the floors of the soft round. Run in a process without
TRITON_INTERPRET (tests/test_triton_codegen.py does that):

    python tests/triton_codegen.py        # a JSON list, one object per kernel variant
"""

import json
import multiprocessing
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lsq_fast._triton import lsq, lsq_plus, qil

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

# Each kernel's runtime arguments, in order, spelled out: a kernel that gains or loses one fails
# here (see runtime_args) instead of being compiled with a default the launch does not use.
LSQ_FWD = ["x_ptr", "y_ptr", "step_ptr", "n_rows", "n_cols", "channels", "qmin", "qmax"]
LSQ_BWD = ["grad_y_ptr", "x_ptr", "step_ptr", "grad_x_ptr", "partial_ptr", "grad_step_ptr", "grad_scale",
           "n_rows", "n_cols", "channels", "qmin", "qmax", "soft_round_k", "soft_round_c"]
PLUS_FWD = ["x_ptr", "y_ptr", "step_ptr", "offset_ptr", "n_rows", "n_cols", "channels", "qmin", "qmax"]
PLUS_BWD = ["grad_y_ptr", "x_ptr", "step_ptr", "offset_ptr", "grad_x_ptr", "partial_ptr", "grad_step_ptr",
            "grad_offset_ptr", "grad_scale", "n_partials", "n_rows", "n_cols", "channels", "qmin", "qmax"]
QIL_FWD = ["x_ptr", "y_ptr", "center_ptr", "distance_ptr", "gamma_ptr", "levels", "n_cols"]
QIL_BWD = ["grad_y_ptr", "x_ptr", "center_ptr", "distance_ptr", "gamma_ptr", "grad_x_ptr", "partial_ptr",
           "grad_center_ptr", "grad_distance_ptr", "grad_gamma_ptr", "n_cols"]
QIL_SUM = ["partial_ptr", "center_ptr", "distance_ptr", "grad_center_ptr", "grad_distance_ptr", "grad_gamma_ptr",
           "n_partials"]

DATA_PTRS = {"x_ptr", "y_ptr", "grad_y_ptr", "grad_x_ptr"}  # x's dtype; every other pointer is float32
FLOAT_ARGS = {"grad_scale", "soft_round_k", "soft_round_c", "levels"}  # tl.float64 parameters

# The LSQ backward's round: straight-through (as lsq.soft_round_args(None) passes it), or the
# arctan soft round (SOFT_ROUND with runtime k and c).
STE = dict(SOFT_ROUND=False)
SOFT = dict(SOFT_ROUND=True)
ONE_ROW = dict(STEP_MODE=0, BLOCK_R=1, BLOCK_C=4096, ONE_ROW=True)  # per-tensor, large
WHOLE_ROWS = dict(STEP_MODE=1, BLOCK_R=1, BLOCK_C=8192, ONE_ROW=False)  # a weight's rows (16 warps)
PER_ROW = dict(STEP_MODE=1, BLOCK_R=1, BLOCK_C=4096, ONE_ROW=False)
PER_COL = dict(STEP_MODE=2, BLOCK_R=64, BLOCK_C=64, ONE_ROW=False)  # channels_last activations
# Per-group steps of a large weight ([numel / G, G] rows): 4096-element tiles of whole groups.
GROUPS_128 = dict(STEP_MODE=1, BLOCK_R=32, BLOCK_C=128, ONE_ROW=False)
GROUPS_32 = dict(STEP_MODE=1, BLOCK_R=128, BLOCK_C=32, ONE_ROW=False)
QIL_TILE = dict(BLOCK_C=4096)
WEIGHT = dict(WEIGHT=True, HAS_GAMMA=True)
ACTIVATION = dict(WEIGHT=False, HAS_GAMMA=False)

# (kernel, runtime args, data dtype, constexprs, warps): the variants the size classes launch for
# large tensors (tiles.size_class). LSQ's per-row and per-column tiles stand for LSQ+'s too, which
# share their indexing and loads; each variant costs about 0.2-0.5 s to compile per architecture.
VARIANTS = [
    (lsq._lsq_forward_kernel, LSQ_FWD, "fp32", ONE_ROW, 8),
    (lsq._lsq_forward_kernel, LSQ_FWD, "bf16", ONE_ROW, 8),
    (lsq._lsq_forward_kernel, LSQ_FWD, "fp32", PER_ROW, 8),
    (lsq._lsq_forward_kernel, LSQ_FWD, "fp32", PER_COL, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "fp32", {**ONE_ROW, "FINAL": False, **STE}, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "bf16", {**ONE_ROW, "FINAL": False, **STE}, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "fp32", {**WHOLE_ROWS, "FINAL": True, **STE}, 16),
    (lsq._lsq_backward_kernel, LSQ_BWD, "fp32", {**PER_COL, "FINAL": False, **STE}, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "fp32", {**ONE_ROW, "FINAL": False, **SOFT}, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "fp32", {**WHOLE_ROWS, "FINAL": True, **SOFT}, 16),
    (lsq._lsq_forward_kernel, LSQ_FWD, "bf16", GROUPS_128, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "fp32", {**GROUPS_128, "FINAL": True, **STE}, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "bf16", {**GROUPS_128, "FINAL": True, **STE}, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "bf16", {**GROUPS_32, "FINAL": True, **STE}, 8),
    (lsq._lsq_backward_kernel, LSQ_BWD, "bf16", {**GROUPS_128, "FINAL": True, **SOFT}, 8),
    (lsq_plus._lsq_plus_backward_kernel, PLUS_BWD, "bf16", {**GROUPS_128, "FINAL": True}, 8),
    (lsq_plus._lsq_plus_forward_kernel, PLUS_FWD, "fp32", ONE_ROW, 8),
    (lsq_plus._lsq_plus_forward_kernel, PLUS_FWD, "bf16", ONE_ROW, 8),
    (lsq_plus._lsq_plus_backward_kernel, PLUS_BWD, "fp32", {**ONE_ROW, "FINAL": False}, 8),
    (lsq_plus._lsq_plus_backward_kernel, PLUS_BWD, "bf16", {**ONE_ROW, "FINAL": False}, 8),
    (lsq_plus._lsq_plus_backward_kernel, PLUS_BWD, "fp32", {**WHOLE_ROWS, "FINAL": True}, 16),
    (qil._qil_forward_kernel, QIL_FWD, "fp32", {**WEIGHT, **QIL_TILE}, 8),
    (qil._qil_forward_kernel, QIL_FWD, "bf16", {**WEIGHT, **QIL_TILE}, 8),
    (qil._qil_forward_kernel, QIL_FWD, "fp32", {**ACTIVATION, **QIL_TILE}, 8),
    (qil._qil_forward_kernel, QIL_FWD, "bf16", {**ACTIVATION, **QIL_TILE}, 8),
    (qil._qil_backward_kernel, QIL_BWD, "fp32", {**WEIGHT, **QIL_TILE, "FINAL": False}, 8),
    (qil._qil_backward_kernel, QIL_BWD, "bf16", {**WEIGHT, **QIL_TILE, "FINAL": False}, 8),
    (qil._qil_backward_kernel, QIL_BWD, "fp32", {**ACTIVATION, **QIL_TILE, "FINAL": False}, 8),
    (qil._qil_backward_kernel, QIL_BWD, "bf16", {**ACTIVATION, **QIL_TILE, "FINAL": False}, 8),
    # qil.backward's second launch, at its largest accumulator (qil.py: 8 warps, not 4, so as not to spill)
    (qil._qil_sum_partials_kernel, QIL_SUM, "fp32", dict(HAS_GAMMA=True, BLOCK_K=2048), 8),
]


def runtime_args(kernel, args, constexprs):
    expected = [name for name in kernel.arg_names if name not in constexprs]
    if args != expected:
        raise SystemExit(f"{kernel.__name__}: runtime arguments are {expected}, this script lists {args}")


def signature(kernel, args, dtype, constexprs):
    """Every parameter of the kernel, in its order: pointers, float64 scalars, int32 scalars, constexprs."""
    runtime_args(kernel, args, constexprs)
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}" if name in DATA_PTRS else "*fp32"
        else:
            sig[name] = "fp64" if name in FLOAT_ARGS else "i32"
    return sig


@triton.jit
def _multiply_add_control(x_ptr, y_ptr, n_cols, BLOCK_C: tl.constexpr):
    """Not a project kernel: a plain x * x + x, compiled as the kernels are, so that the FMA count
    is seen to catch a contracted multiply-add (Triton contracts by default)."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    x = tl.load(x_ptr + cols, mask=cols < n_cols)
    tl.store(y_ptr + cols, x * x + x, mask=cols < n_cols)


CONTROL = (_multiply_add_control, ["x_ptr", "y_ptr", "n_cols"], "fp32", dict(BLOCK_C=1024), 4)


def resource_usage(cubin: bytes) -> dict:
    """REG, STACK and LOCAL of the cubin's one kernel, from cuobjdump -res-usage (the numbers
    ptxas -v prints: registers, and the stack frame that spill stores go to)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        dump = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    line = re.search(r"REG:\d+.*", dump).group(0)
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", line)}


def report(kernel, args, dtype, constexprs, warps, capability):
    sig = signature(kernel, args, dtype, constexprs)
    # As Triton specializes at launch: pointers from the caching allocator and row lengths that
    # are multiples of 16 are known to be 16-aligned.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if name.endswith("_ptr") or name == "n_cols"}
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": warps},
    )
    ptx = compiled.asm["ptx"]
    usage = resource_usage(compiled.asm["cubin"])
    return {
        "kernel": kernel.__name__,
        "dtype": dtype,
        "constexprs": constexprs,
        "num_warps": warps,
        "sm": capability,
        "registers": usage["REG"],
        "stack_bytes": usage["STACK"],  # spill stores need a stack frame: 0 means no spills
        "local_bytes": usage["LOCAL"],
        "vector_loads": len(re.findall(r"ld\.global[.\w:]*\.v[24]\.", ptx)),
        "vector_stores": len(re.findall(r"st\.global[.\w:]*\.v[24]\.", ptx)),
        # 16 bytes at once: four 32-bit lanes (four float32, or eight bfloat16 as b32 pairs)
        "wide_loads": len(re.findall(r"ld\.global[.\w:]*\.(?:v4\.[bfu]32|v2\.[bfu]64)\s", ptx)),
        "wide_stores": len(re.findall(r"st\.global[.\w:]*\.(?:v4\.[bfu]32|v2\.[bfu]64)\s", ptx)),
        "ieee_divides": len(re.findall(r"div\.rn\.f32", ptx)),
        "approximate_divides": len(re.findall(r"div\.(?:full|approx)(?:\.ftz)?\.f32", ptx)),
        # float32 math only: 0f4B400000 is 1.5 * 2^23 (float64 math would add 1.5 * 2^52)
        "round_constant_adds": len(re.findall(r"add\.f32\s+%r\d+, %r\d+, 0f4B400000", ptx)),
        # LLVM's contraction of the kernel's own a * b + c (IEEE denormals, so no .ftz) ...
        "fma_f32": len(re.findall(r"\bfma\.rn\.f32\b", ptx)),
        # ... and libdevice's, which Triton links in flush-to-zero mode (log2f's polynomial)
        "fma_ftz_f32": len(re.findall(r"\bfma\.rn\.ftz\.f32\b", ptx)),
        "mul_rn_f32": len(re.findall(r"\bmul\.rn\.f32\b", ptx)),  # tile_math.mul_rn's inline PTX
        "floors": len(re.findall(r"\bcvt\.rmi(?:\.ftz)?\.f32\.f32\b", ptx)),  # tl.floor: the soft round's frac(u)
        "approximate_transcendentals": len(re.findall(r"\b(?:ex2|lg2)\.approx(?:\.ftz)?\.f32\b", ptx)),
        "control": kernel is CONTROL[0],
    }


JOBS = [(index, capability) for capability in (80, 90) for index in range(len(VARIANTS) + 1)]


def _report(job):
    index, capability = job  # an index, not the kernel: a @triton.jit function does not pickle
    return report(*(VARIANTS[index] if index < len(VARIANTS) else CONTROL), capability)


if __name__ == "__main__":
    # Compilation is CPU-bound and independent per variant: one process per core (fork keeps the
    # imports), results in a fixed order.
    jobs = JOBS
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = pool.map(_report, jobs, chunksize=1)
    else:
        rows = [_report(job) for job in jobs]
    print(json.dumps(rows))
