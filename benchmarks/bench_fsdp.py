"""What fully_shard_quantizers costs under FSDP2: collectives per training step and step time,
on 2 gloo ranks of this machine (CPU), for a stack of quantized Linear layers.

    python benchmarks/bench_fsdp.py [--layers 8] [--width 1024] [--batch 64] [--steps 20]

Variants, each fully_shard per layer and on the root:
  float              the float model (no quantizers)
  units              quantize_model + fully_shard_quantizers (the recipe: a layer's quantizers one
                     unit, gathered from its forward to the end of the backward)
  units-resharded    the same, fully_shard_quantizers(reshard_after_forward=True)
  with-layers        quantize_model, the quantizers initialised before sharding and sharded with
                     their layer's parameters (float32 only: no bfloat16 policy possible)

Collectives are counted with torch's CommDebugMode over one step after the first. Times are
the median of --steps steps on gloo over loopback with two ranks on this machine's cores: they
show the order of the added latency, not what NCCL on GPUs would give.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

VARIANTS = ("float", "units", "units-resharded", "with-layers")


def make(args, variant: str) -> nn.Module:
    import lsq_fast
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    layers = []
    for _ in range(args.layers):
        layers += [nn.Linear(args.width, args.width), nn.ReLU()]
    net = nn.Sequential(*layers)
    if variant != "float":
        lsq_fast.quantize_model(net, first_last_bits=None)
    if variant == "with-layers":
        net(torch.randn(args.batch // 2, args.width))  # initialised before sharding, on every rank
    elif variant.startswith("units"):
        lsq_fast.fully_shard_quantizers(net, reshard_after_forward=variant == "units-resharded")
    for layer in net:
        if not isinstance(layer, nn.ReLU):
            fully_shard(layer)
    fully_shard(net)
    return net


def rank_main(rank: int, args, store: str, out: str) -> None:
    from torch.distributed.tensor.debug import CommDebugMode

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    results = {}
    for variant in VARIANTS:
        net = make(args, variant)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
        x = torch.randn(args.batch // 2, args.width)
        labels = torch.randint(0, args.width, (args.batch // 2,))

        def step():
            optimizer.zero_grad()
            F.cross_entropy(net(x), labels).backward()
            optimizer.step()

        step()  # the initialisation
        with CommDebugMode() as comms:
            step()
        times = []
        for _ in range(args.steps):
            dist.barrier()
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        counts = {str(k).split(".")[-1]: v for k, v in comms.get_comm_counts().items()}
        results[variant] = (comms.get_total_counts(), counts, statistics.median(times))
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    """Runs the variants, prints the table, returns {variant: (collectives, {kind: count}, seconds)}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(rank_main, args=(args, f"{tmp}/store", f"{tmp}/out"), nprocs=2, join=True)
        results = torch.load(f"{tmp}/out", weights_only=False)
    print(f"# {args.layers} x Linear({args.width}, {args.width}), batch {args.batch} over 2 gloo ranks, "
          f"torch {torch.__version__}, {os.cpu_count()} cores")
    print(f"{'variant':18} {'collectives/step':>16}  {'median step ms':>14}  kinds")
    for variant, (total, counts, seconds) in results.items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"{variant:18} {total:16d}  {seconds * 1e3:14.1f}  {kinds}")
    return results


if __name__ == "__main__":
    main()
