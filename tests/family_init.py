"""Each family quantizer's initialisation on its own, on this rank's slice of the same batches:
what test_ddp.py and test_fsdp.py check against one process (LSQ+'s min/max and MSE search over
two batches, LSQ+'s 3-sigma weight init through LSQQuantizer, QIL's interval, per-tensor and
per-channel)."""

from __future__ import annotations

import torch

from lsq_fast import LSQPlusQuantizer, LSQQuantizer, QILQuantizer, fully_shard_quantizers
from lsq_fast.nn.distributed import full_value


def family_init(seed: int, rank: int = 0, world: int = 1, sharded: bool = False) -> dict[str, torch.Tensor]:
    """Each quantizer initialised from this rank's slice of the same batches (the whole batches
    when world == 1); `sharded`: each an FSDP2 unit of its own (fully_shard_quantizers). The MSE
    search samples every element here (MSE_SAMPLES above the element count), so that the ranks
    together see what one process sees."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.2, 1.0, 5.0]).reshape(1, 3, 1, 1)
    first, second = (torch.randn(8, 3, 5, 5, generator=generator) * scale + 0.3 for _ in range(2))
    weight = torch.randn(6, 3, 3, 3, generator=generator)  # every rank holds all of it

    def mine(x: torch.Tensor) -> torch.Tensor:
        return x.chunk(world)[rank]

    made = {
        "minmax": LSQPlusQuantizer(4, channel_axis=1, num_channels=3),
        "mse": LSQPlusQuantizer(3, init="mse", init_batches=2),
        "mse-channels": LSQPlusQuantizer(2, True, channel_axis=1, num_channels=3, init="mse", init_batches=2),
        "3sigma": LSQQuantizer(4, True, channel_axis=1, num_channels=3, init="lsq+"),
        "lsq-channels": LSQQuantizer(3, channel_axis=1, num_channels=3),
        "qil-activation": QILQuantizer(4, "activation"),
        "qil-weight": QILQuantizer(3, "weight"),
    }
    out = {}
    for name, q in made.items():
        q.MSE_SAMPLES = 10_000
        if sharded:  # the MSE search's units stay gathered after the first batch (no backward reshards them)
            fully_shard_quantizers(q, reshard_after_forward=not name.startswith("mse"))

        def values(prefix: str, final: bool = True) -> dict[str, torch.Tensor]:
            if sharded and final:
                q.reshard()  # what the shards hold, not a gathered copy
            return {f"{prefix}.{k}": full_value(v).detach().clone() for k, v in q.named_parameters()}

        if name == "qil-activation":
            q(mine(first).relu())
        elif name == "qil-weight":
            q(weight)
        else:
            q(mine(first))
        if not q.initialized:  # the MSE search's first batch: the running min/max estimate, synced
            out.update(values(f"{name}.after-first", final=False))  # the copy the forward used
            q(mine(second))
        assert q.initialized
        out.update(values(name))
    return out


def assert_family_init(ranks: list[dict], single: dict) -> None:
    """The ranks agree to the bit, and with one process: min/max and the MSE candidates exactly,
    the sums of LSQ and 3-sigma within float64 rounding."""
    assert ranks[0].keys() == single.keys()
    assert sum(k.startswith("mse") and ".after-first." in k for k in single) == 4
    for name, value in single.items():
        assert all(torch.equal(r[name], ranks[0][name]) for r in ranks), f"{name} differs between ranks"
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-7, msg=name)
