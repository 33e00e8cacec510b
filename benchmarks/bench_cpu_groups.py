"""The CPU ops alone (forward, backward) on a 4096x4096 weight: one step, one per output channel,
and one per group of 128 or 32 inputs (the per-group path: per-channel steps on [numel / G, G]),
float32 and bfloat16, against a copy of the weight. What the CPU walk's grouping of short runs
was measured with (README, "CPU kernels"); bench_lsq.py's LLM suite is to replace it.

    python benchmarks/bench_cpu_groups.py [--repeat 10]

Times are the median of --repeat calls after 3 warm-up calls, each call allocating its outputs
as the ops do in training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lsq_fast.ops.registry import quantizer_ops


def median_ms(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args(argv)
    forward, backward = quantizer_ops("lsq", "cpu")
    n = args.size
    print(f"# lsq_fast CPU ops on a {n}x{n} weight, {torch.get_num_threads()} threads; median of {args.repeat}, ms")
    print(f"{'dtype':10} {'steps':14} {'forward':>8} {'backward':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(n, n).to(dtype)
        grad_y = torch.randn_like(x)
        cases = {
            "per-tensor": (x, torch.tensor([0.05]), None),
            "per-channel": (x, torch.full((n,), 0.05), 0),
            "group 128": (x.reshape(-1, 128), torch.full((n * n // 128,), 0.05), 0),
            "group 32": (x.reshape(-1, 32), torch.full((n * n // 32,), 0.05), 0),
        }
        for name, (xs, step, axis) in cases.items():
            gy = grad_y.reshape(xs.shape)
            f = median_ms(lambda: forward(xs, step, -8, 7, axis, None), args.repeat)
            b = median_ms(lambda: backward(gy, xs, step, -8, 7, axis, None), args.repeat)
            print(f"{str(dtype).removeprefix('torch.'):10} {name:14} {f:8.1f} {b:9.1f}")
        print(f"{str(dtype).removeprefix('torch.'):10} {'copy':14} {median_ms(x.clone, args.repeat):8.1f}")


if __name__ == "__main__":
    main()
