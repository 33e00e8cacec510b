"""DistributedDataParallel with the gloo backend, two processes on this machine: every rank
initialises from its own slice of the first batch, yet all ranks hold the same steps, equal to
one process's on the whole batch, and at every SGD step the same gradients as one process from
the same parameters (quantizer parameters within the contract's bound). The same
for LSQ+ and QIL models, for each family quantizer's initialisation on its own (LSQ+'s
min/max and MSE search, LSQ+'s 3-sigma weight init, QIL's interval), and for the small
Llama-shaped transformer, weight-only with per-group LSQ and LSQ+ steps and a tied embedding."""

from distributed_harness import WORLD, assert_same_steps, needs_gloo, spawn, train
from family_init import assert_family_init, family_init


def _lsq_ranks(rank: int, seed: int, single: dict) -> dict:
    return train(seed, rank, WORLD, follow=single)


@needs_gloo
def test_ddp_matches_one_process_on_the_whole_batch(tmp_path, seed):
    single = train(seed)
    ranks = spawn(_lsq_ranks, tmp_path, seed, single)
    assert len(single["steps"][0]["bounds"]) == 8  # 4 layers' weight and input steps
    assert_same_steps(ranks, single)


def _family_ranks(rank: int, seed: int, single: dict) -> dict:
    state = {"init": family_init(seed, rank, WORLD)}
    for method in ("lsq+", "qil"):
        state[method] = train(seed, rank, WORLD, method, follow=single[method])
    return state


@needs_gloo
def test_ddp_family_matches_one_process(tmp_path, seed):
    single = {"init": family_init(seed)}
    for method in ("lsq+", "qil"):
        single[method] = train(seed, method=method)
    ranks = spawn(_family_ranks, tmp_path, seed, single)
    assert_family_init([r["init"] for r in ranks], single["init"])
    assert len(single["lsq+"]["steps"][0]["bounds"]) == 4 + 8  # weight steps; input steps and offsets
    assert len(single["qil"]["steps"][0]["bounds"]) == 4 * 3 + 4 * 2  # weights: c, d, gamma; inputs: c, d
    for method in ("lsq+", "qil"):
        assert_same_steps([r[method] for r in ranks], single[method], f"{method}: ")


def _transformer_ranks(rank: int, seed: int, singles: dict) -> dict:
    return {method: train(seed, rank, WORLD, method, singles[method], model="llama", per_channel=32)
            for method in ("lsq", "lsq+")}


@needs_gloo
def test_ddp_transformer_with_per_group_steps(tmp_path, seed):
    singles = {method: train(seed, method=method, model="llama", per_channel=32) for method in ("lsq", "lsq+")}
    ranks = spawn(_transformer_ranks, tmp_path, seed, singles)
    for method, single in singles.items():
        assert len(single["steps"][0]["bounds"]) == (2 * 7 + 1) * (2 if method == "lsq+" else 1)
        assert_same_steps([r[method] for r in ranks], single, f"{method}: ")
