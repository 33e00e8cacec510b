"""The benchmark's peers (benchmarks/peers.py) compute what their rows say: each library's
quantizer with the case's step in its own parameterisation, checked against the reference with
g = 1 where the peer's semantics agree, and the benchmark's tables and summary carry them."""

import json
import sys
from pathlib import Path

import pytest
import torch

import lsq_fast
from lsq_oracle import assert_step_grad_close, u_in_math

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_lsq  # noqa: E402
import cases  # noqa: E402
import peers  # noqa: E402
import run as bench_run  # noqa: E402
from quantizers import QUANTIZERS  # noqa: E402

LAYOUTS = [
    cases._act("act", (2, 8, 9, 7)),  # unsigned, per tensor
    cases._weight("w", (6, 5, 3, 3)),  # signed, per output channel
    cases._group_weight("g", (5, 256), group=64),  # signed, per group
]


def needs(name):
    return pytest.mark.skipif(not peers.available(name), reason=f"{name} is not installed (the peers extra)")


def reference_g1(case, inp):
    """The reference's output and gradients with g = 1 (the peers' gradient scale)."""
    x, step = inp.x, inp.params[0]
    y = lsq_fast.reference.lsq_quantize(x, step, case.bits, signed=case.signed, channel_axis=case.channel_axis,
                                        group_size=case.group_size, grad_scale=1.0)
    return y, torch.autograd.grad(y, (x, step), inp.grad_y)


def peer_run(builder, case, inp):
    fn = builder(case, inp)
    if fn is None:
        return None
    y = fn(inp.x, *inp.params)
    return y, torch.autograd.grad(y, (inp.x, *inp.params), inp.grad_y)


def as_blocks(case, inp, x=None):
    """x, the step and grad_y as the oracle's per-channel view: [steps, block] rows, axis 0."""
    x2, step = peers.blocks(inp.x.detach() if x is None else x, inp.params[0].detach())
    return x2, step.reshape(-1), inp.grad_y.reshape(x2.shape)


@needs("brevitas")
@pytest.mark.parametrize("case", LAYOUTS, ids=lambda c: c.name)
def test_brevitas_is_lsq_with_unit_grad_scale(case, seed):
    """Brevitas divides and rounds half to even: the reference's forward, the reference's
    grad_x (the same autograd arithmetic, x / s then times s) outside the band its wider pass
    band adds, and, with no upstream gradient in that band, LSQ's step gradient with g = 1
    within the contract's bound."""
    inp = cases.make_inputs(case, torch.float32, torch.device("cpu"), seed=seed)
    y0, (gx0, _) = reference_g1(case, inp)
    y, (gx, _) = peer_run(peers.brevitas_lsq, case, inp)
    assert y.dtype == inp.x.dtype and torch.equal(y, y0)
    x2, step, gy2 = as_blocks(case, inp)
    qmin, qmax = lsq_fast.qrange(case.bits, case.signed)
    u = u_in_math(x2, step, 0)
    wide_only = ((u <= qmin) & (u >= qmin - 0.5)) | ((u >= qmax) & (u <= qmax + 0.5))
    assert torch.equal(gx.reshape(x2.shape)[~wide_only], gx0.reshape(x2.shape)[~wide_only])
    gy_outside_band = torch.where(wide_only, 0.0, gy2)
    y = peers.brevitas_lsq(case, inp)(inp.x, *inp.params)
    gs, = torch.autograd.grad(y, inp.params[0], gy_outside_band.reshape(y.shape))
    assert_step_grad_close(gs.reshape(-1), x2, step, gy_outside_band, case.bits, case.signed, 0, grad_scale=1.0)


@needs("torchao")
@pytest.mark.parametrize("case", LAYOUTS[1:], ids=lambda c: c.name)
def test_torchao_forward_is_the_references(case, seed):
    inp = cases.make_inputs(case, torch.float32, torch.device("cpu"), seed=seed)
    y0, _ = reference_g1(case, inp)
    assert torch.equal(peer_run(peers.torchao_lsq, case, inp)[0], y0)
    assert peers.torchao_lsq(LAYOUTS[0], inp) is None  # unsigned grids: not torchao's


@needs("nncf")
@pytest.mark.parametrize("case", LAYOUTS, ids=lambda c: c.name)
def test_nncf_sits_on_the_grid_within_an_ulp(case, seed):
    """NNCF's reciprocal and offset arithmetic moves outputs by an ulp, never a step; its clip
    terms of the step gradient are LSQ's (qmin, qmax), so on data that is all clipped the step
    gradients agree."""
    inp = cases.make_inputs(case, torch.float32, torch.device("cpu"), seed=seed)
    y0, _ = reference_g1(case, inp)
    y, _ = peer_run(peers.nncf_lsq, case, inp)
    torch.testing.assert_close(y, y0, rtol=1e-6, atol=1e-6)
    far = torch.where(inp.x.detach() > 0, 1e3, -1e3)  # every element beyond a clip point
    clipped = cases.Inputs(x=far.requires_grad_(), params=inp.params, grad_y=inp.grad_y,
                           grad_scale=inp.grad_scale)
    _, (_, gs) = peer_run(peers.nncf_lsq, case, clipped)
    x2, step, gy2 = as_blocks(case, clipped)
    assert_step_grad_close(gs.reshape(-1), x2, step, gy2, case.bits, case.signed, 0, grad_scale=1.0)


@needs("nncf")
def test_nncf_asymmetric_on_lsq_plus_grid(seed):
    case = LAYOUTS[1]
    q = QUANTIZERS["lsq+"]
    inp = cases.make_inputs(case, torch.float32, torch.device("cpu"), seed=seed, params=q.params)
    ref = bench_lsq.build_reference(q, case, inp)(inp.x, *inp.params)
    y = q.peers["nncf"](case, inp)(inp.x, *inp.params)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)


def test_main_suite_against_every_installed_peer(tmp_path, monkeypatch):
    """Every installed peer gets rows (per-tensor activations leave torchao out: unsigned), a
    forward-agreement value, and a semantics note; the summary's peer lines read them."""
    monkeypatch.setitem(cases.SUITES, "main", LAYOUTS[:2])
    out = tmp_path / "peers.json"
    md = tmp_path / "peers.md"
    bench_lsq.main(["--device", "cpu", "--suite", "main", "--dtype", "float32", "bfloat16", "--rounds", "1",
                    "--modes", "fwd+bwd", "--json", str(out), "--markdown", str(md)])
    results = json.loads(out.read_text())["results"]
    timed = {(r["case"], r["dtype"], r["provider"]) for r in results if r["ms"] is not None}
    installed = [p for p in ("torchao", "brevitas", "nncf") if peers.available(p)]
    for peer in installed:
        assert ("w", "float32", peer) in timed and ("w", "bfloat16", peer) in timed
        assert f"- {peer}: " in md.read_text()
    assert ("act", "float32", "torchao") not in timed
    assert ("act", "float32", "torch_learnable") in timed and ("act", "bfloat16", "torch_learnable") not in timed
    assert all(r["mismatch"] is not None for r in results if r["ms"] is not None)
    lines = bench_run.peer_lines(results)
    assert {line.split(":")[0] for line in lines} >= {f"- lsq_fast vs {p}" for p in ["reference", *installed]}
