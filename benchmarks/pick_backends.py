"""Measures, on this GPU, which fused backend ("cuda" or "triton") runs LSQ forward+backward
faster for each key of lsq_fast/backend_table.py (layout, dtype, size class), and records the
winners for this GPU architecture in lsq_fast/ops/backend_table.json: what backend="auto" follows.

    python benchmarks/pick_backends.py                    # on a GPU; updates the table in place
    python benchmarks/pick_backends.py --out table.json   # or writes a copy (gpu_run.sh: to $OUT)

A backend wins a key only by a margin (--margin, default 3%); otherwise the key keeps the
table's default (backend_table.DEFAULT), so noise does not flip choices between runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch

from timing import interleaved_medians  # benchmarks/ is on sys.path when run as a script

import lsq_fast
from lsq_fast.ops import backend_table

# One representative tensor per (layout, size class): (shape, channel_axis, channels_last).
SHAPES = {
    "tensor": [((1 << 14,), None, False), ((1 << 18,), None, False), ((1 << 22,), None, False), ((1 << 25,), None, False)],
    "weight": [((64, 64, 3, 3), 0, False), ((256, 256, 3, 3), 0, False), ((512, 512, 3, 3), 0, False),
               ((4096, 4608), 0, False)],
    "channel_runs": [((2, 16, 32, 32), 1, False), ((8, 64, 28, 28), 1, False), ((32, 64, 56, 56), 1, False),
                     ((128, 64, 56, 56), 1, False)],
    "channels_fastest": [((2, 16, 32, 32), 1, True), ((8, 64, 28, 28), 1, True), ((32, 64, 56, 56), 1, True),
                         ((128, 64, 56, 56), 1, True)],
}
DTYPES = ("float32", "bfloat16", "float16")


def fwd_bwd(x, step, grad_y, axis, backend):
    def run():
        y = lsq_fast.lsq_quantize(x, step, 4, channel_axis=axis, backend=backend)
        torch.autograd.grad(y, (x, step), grad_y)

    return run


def measure(rounds: int, margin: float, device: torch.device) -> tuple[dict, dict]:
    choices, timings = {}, {}
    for layout, shapes in SHAPES.items():
        for shape, axis, channels_last in shapes:
            for dtype_name in DTYPES:
                x = torch.randn(shape, device=device, dtype=getattr(torch, dtype_name))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_()
                channels = 1 if axis is None else shape[axis]
                step = torch.full((channels,), 0.05, device=device, requires_grad=True)
                grad_y = torch.randn_like(x)
                key = backend_table.key(x, axis)
                assert key.startswith(layout), (key, layout)
                ms = {name: t.median_s * 1e3 for name, t in interleaved_medians(
                    {b: fwd_bwd(x, step, grad_y, axis, b) for b in ("cuda", "triton")}, device, rounds=rounds).items()}
                other = "triton" if backend_table.DEFAULT == "cuda" else "cuda"
                winner = other if ms[other] * (1 + margin) < ms[backend_table.DEFAULT] else backend_table.DEFAULT
                choices[key] = winner
                timings[key] = {"shape": list(shape), "ms": ms, "winner": winner}
                print(f"{key:40s} cuda {ms['cuda']:.4f} ms  triton {ms['triton']:.4f} ms  -> {winner}", flush=True)
    return choices, timings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--margin", type=float, default=0.03)
    p.add_argument("--out", type=Path, default=backend_table.TABLE_PATH, help="table to update (default: the package's)")
    args = p.parse_args(argv)
    device = torch.device("cuda")
    missing = {"cuda", "triton"} - set(lsq_fast.available_backends(device))
    if missing:
        print(f"needs both GPU backends; missing here: {', '.join(sorted(missing))}")
        return 2
    choices, timings = measure(args.rounds, args.margin, device)
    source = args.out if args.out.exists() else backend_table.TABLE_PATH
    table = json.loads(source.read_text())
    table["architectures"][backend_table.architecture(torch.cuda.current_device())] = {
        "device": torch.cuda.get_device_name(device),
        "date": datetime.date.today().isoformat(),
        "commit": os.environ.get("LSQ_FAST_COMMIT", "unknown"),
        "torch": torch.__version__,
        "measure": f"median fwd+bwd ms, {args.rounds} interleaved rounds, margin {args.margin:.0%}",
        "choices": choices,
        "timings_ms": timings,
    }
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
