"""Tries tile sizes and warp counts of the Triton LSQ kernels on this GPU, per size class, and
prints the fastest beside what lsq_fast/_triton/tiles.py picks today.

The launch configuration is a table in tiles.py, a pure function of the shape, rather than
triton.autotune at run time: a timed choice would make the step gradient's rounding depend on
which config won in this process, and its first call would sync with the host (no CUDA-graph
capture). So the autotuning is done here, once per GPU model, and its choice is kept by
editing that table from this script's output.

    python benchmarks/tune_triton.py --json tune.json            # on a GPU
    TRITON_INTERPRET=1 python benchmarks/tune_triton.py --device cpu --quick   # smoke test only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from timing import interleaved_medians  # benchmarks/ is on sys.path when run as a script

from lsq_fast._triton import lsq as triton_lsq
from lsq_fast._triton.tiles import pick_tile

# (name, shape, channel_axis, channels_last): one tensor per size class and layout.
CASES = [
    ("act-4K", (4096,), None, False),
    ("act-64K", (1 << 16,), None, False),
    ("act-1M", (1 << 20,), None, False),
    ("act-16M", (1 << 24,), None, False),
    ("act-64M", (1 << 26,), None, False),
    ("weight-64x64x3x3", (64, 64, 3, 3), 0, False),
    ("weight-512x512x3x3", (512, 512, 3, 3), 0, False),
    ("nchw-32x64x56x56-axis1", (32, 64, 56, 56), 1, False),
    ("nhwc-32x64x56x56-axis1", (32, 64, 56, 56), 1, True),
]
ELEMENTS = (1024, 2048, 4096, 8192, 16384)
WARPS = (2, 4, 8, 16)


def candidates(quick: bool):
    if quick:
        return [(None, None), (1024, 4)]
    return [(None, None)] + [(e, w) for e in ELEMENTS for w in WARPS if e // (32 * w) >= 2]


def tune_case(name, shape, axis, channels_last, dtype, device, rounds, quick):
    x = torch.randn(shape, device=device).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    step = torch.full((1 if axis is None else shape[axis],), 0.05, device=device)
    grad_y = torch.randn_like(x)
    results = {}
    for direction in ("fwd", "bwd"):
        thunks = {}
        for elements, warps in candidates(quick):
            tile_for = lambda view, e=elements, w=warps: pick_tile(view, e, w)  # noqa: E731
            label = "current" if elements is None else f"{elements}x{warps}w"
            if direction == "fwd":
                thunks[label] = lambda t=tile_for: triton_lsq.forward(x, step, -8, 7, axis, tile_for=t)
            else:
                thunks[label] = lambda t=tile_for: triton_lsq.backward(grad_y, x, step, -8, 7, axis, None, tile_for=t)
        timings = interleaved_medians(thunks, device, rounds=rounds)
        ms = {label: t.median_s * 1e3 for label, t in timings.items()}
        best = min(ms, key=ms.get)
        results[direction] = {"ms": ms, "best": best, "current_over_best": ms["current"] / ms[best]}
        print(f"{name:24s} {str(dtype):15s} {direction}  current {ms['current']:.4f} ms  "
              f"best {best} {ms[best]:.4f} ms  (current is {ms['current'] / ms[best]:.2f}x the best)")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quick", action="store_true", help="two candidates and the smallest cases: a smoke test")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cases = CASES[:1] + CASES[5:6] if args.quick else CASES
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "cases": {}}
    for name, shape, axis, channels_last in cases:
        for dtype_name in args.dtype:
            out["cases"][f"{name}/{dtype_name}"] = tune_case(
                name, shape, axis, channels_last, getattr(torch, dtype_name), device, args.rounds, args.quick
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
