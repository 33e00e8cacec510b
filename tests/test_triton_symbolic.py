"""The Triton ops' host code under symbolic shapes, as torch.compile runs it on a GPU.

On a GPU each Triton op is a `triton_op`, and torch.compile traces its Python body with fake
tensors whose sizes are SymInts (with dynamic shapes). Under the interpreter (CI) the ops are
opaque custom ops with fake kernels, so that path never runs here by itself. These tests run it:
the host functions of every op on fake CUDA tensors (no GPU needed) with symbolic sizes, the
launches recorded instead of run. What must hold: every compile-time constant (block sizes,
warps, flags) is a plain int or bool equal to the eager call's, grids equal the eager ones, and
the guards are on size classes: the sizes stay symbolic (no specialization to the shape)."""

from __future__ import annotations

import itertools

import pytest
import sympy
import torch

pytest.importorskip("triton")
from torch._dynamo.source import ConstantSource  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv  # noqa: E402
from torch.utils._sympy.functions import FloorDiv  # noqa: E402

from lsq_fast._triton import lsq, lsq_plus, qil, registration  # noqa: E402


class Launches:
    """Stands in for registration.launch: records (kernel, grid, keyword arguments)."""

    def __init__(self):
        self.calls = []

    def __call__(self, kernel, programs):
        def run(*args, **kwargs):
            self.calls.append((kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, programs, kwargs))

        return run


@pytest.fixture
def launches(monkeypatch):
    recorder = Launches()
    for module in (lsq, lsq_plus, qil):
        monkeypatch.setattr(module, "launch", recorder)
    return recorder


class Sizes:
    """Sizes for one trace: plain ints (eager), or backed SymInts with those ints as hints."""

    def __init__(self, symbolic: bool):
        self.env = ShapeEnv() if symbolic else None
        self.mode = FakeTensorMode(shape_env=self.env)
        self.names = itertools.count()

    def __call__(self, *values):
        if self.env is None:
            return values
        out = []
        for v in values:
            source = ConstantSource(f"size{next(self.names)}")
            symbol = self.env.create_symbol(v, source=source, dynamic_dim=DimDynamic.DYNAMIC)
            out.append(self.env.create_symintnode(symbol, hint=v, source=source))
        return tuple(out)

    def specialized(self) -> list:
        """What the trace pinned to a constant: sizes replaced by numbers, and guards that a
        product of sizes equals a number (a guard on the exact shape). A quotient equal to a
        number (a grid of one program: cdiv(n, 1024) == 1) is a range of sizes, which is fine."""
        if self.env is None:
            return []
        pinned = [s for s, e in self.env.replacements.items() if e.is_number]
        return pinned + [
            g.expr for g in self.env.guards
            if isinstance(g.expr, sympy.Eq) and g.expr.rhs.is_number and not g.expr.atoms(FloorDiv)
        ]


def _x(sizes: Sizes, shape, channels_last=False):
    x = torch.empty(sizes(*shape), device="cuda")
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _lsq(sizes, shape, axis, channels_last, soft_round):
    x = _x(sizes, shape, channels_last)
    step = torch.ones(() if axis is None else (x.shape[axis],), device="cuda").reshape(-1)
    lsq.forward(x, step, -4, 3, axis)
    lsq.backward(torch.empty_like(x), x, step, -4, 3, axis, 0.01, 2.0 if soft_round else None)


def _lsq_plus(sizes, shape, axis, channels_last, soft_round):
    x = _x(sizes, shape, channels_last)
    step = torch.ones(() if axis is None else (x.shape[axis],), device="cuda").reshape(-1)
    lsq_plus.forward(x, step, torch.zeros_like(step), 0, 15, axis)
    lsq_plus.backward(torch.empty_like(x), x, step, torch.zeros_like(step), 0, 15, axis, 0.01)


def _qil(sizes, shape, axis, channels_last, soft_round):
    x = _x(sizes, shape, channels_last)
    one = torch.ones(1, device="cuda")
    gamma = one if axis == 0 else None  # weights with an exponent; activations without
    qil.forward(x, one, one, gamma, 7, axis == 0)
    qil.backward(torch.empty_like(x), x, one, one, gamma, 7, axis == 0)


SHAPES = [
    ((4096,), None, False),  # one program
    ((3, 5000), None, False),  # medium per-tensor: partials and the combine
    ((2, 8, 300, 700), None, False),  # large per-tensor
    ((64, 64, 3, 3), 0, False),  # a weight: whole rows
    ((4096, 20000), 0, False),  # rows longer than a program
    ((8, 64, 7, 7), 1, False),  # NCHW activation: a step per row
    ((8, 64, 7, 7), 1, True),  # channels_last: a step per column
    ((40, 3000), 1, False),  # last axis
]


def _trace(host, shape, axis, channels_last, soft_round, launches, symbolic):
    launches.calls.clear()
    sizes = Sizes(symbolic)
    with sizes.mode:
        host(sizes, shape, axis, channels_last, soft_round)
    return list(launches.calls), sizes


def _constants(kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if k.isupper() or k == "num_warps"}


@pytest.mark.parametrize("host", [_lsq, _lsq_plus, _qil], ids=["lsq", "lsq_plus", "qil"])
@pytest.mark.parametrize("shape,axis,channels_last", SHAPES, ids=[f"{s}-{a}-{'cl' if c else 'c'}" for s, a, c in SHAPES])
@pytest.mark.parametrize("soft_round", [False, True], ids=["ste", "soft-round"])
def test_host_code_traces_with_symbolic_shapes(host, shape, axis, channels_last, soft_round, launches):
    if host is not _lsq and soft_round:
        pytest.skip("the soft round is LSQ's")
    if host is _qil and axis not in (None, 0):
        pytest.skip("QIL has one interval per tensor")
    eager, _ = _trace(host, shape, axis, channels_last, soft_round, launches, symbolic=False)
    traced, sizes = _trace(host, shape, axis, channels_last, soft_round, launches, symbolic=True)
    assert not sizes.specialized(), f"the trace pinned sizes to constants: {sizes.specialized()}"
    assert [k for k, _, _ in traced] == [k for k, _, _ in eager]
    for (kernel, grid, kwargs), (_, eager_grid, eager_kwargs) in zip(traced, eager):
        constants = _constants(kwargs)
        bad = {k: type(v).__name__ for k, v in constants.items() if type(v) not in (int, bool)}
        assert not bad, f"{kernel}: compile-time constants must be plain ints or bools, got {bad}"
        assert constants == _constants(eager_kwargs), kernel
        assert int(grid) == eager_grid, kernel  # (int() guards on the grid: after the check above)


def test_default_grad_scale_reads_the_size(launches):
    """grad_scale=None makes the op compute 1/sqrt(N * qmax) on the host: a float of the exact
    size, so a compiled graph guards on N (the quantizer modules pass N's scale the same way).
    It is the one guard on an exact size; this pins that down."""
    sizes = Sizes(symbolic=True)
    with sizes.mode:
        x = torch.empty(sizes(3, 5000), device="cuda")
        step = torch.ones(1, device="cuda")
        lsq.backward(torch.empty_like(x), x, step, -4, 3, None, None)
    assert len(sizes.specialized()) >= 1


def test_ops_run_on_their_inputs_device(monkeypatch):
    """Triton launches on the current CUDA device: each op body runs under its first tensor's
    device (registration.on_input_device); CPU tensors enter no CUDA device."""
    entered = []

    class Device:
        def __init__(self, device):
            entered.append(torch.device(device))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Device)
    body = registration.on_input_device(lambda grad_y, x, k=None: (grad_y.device, k))
    with FakeTensorMode():
        on_gpu = torch.empty(3, device="cuda:1")
        assert body(on_gpu, on_gpu, k=2) == (torch.device("cuda:1"), 2)
    assert entered == [torch.device("cuda:1")]
    body(torch.empty(3), torch.empty(3))
    assert entered == [torch.device("cuda:1")]
    assert registration.on_input_device(lsq.forward).__wrapped__ is lsq.forward
