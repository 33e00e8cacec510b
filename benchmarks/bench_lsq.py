"""Kernel benchmark of LSQ fake quantization (and its relatives): lsq_fast against its peers.

    .venv/bin/python benchmarks/bench_lsq.py                      # what `make bench` runs
    .venv/bin/python benchmarks/bench_lsq.py --dtype float32 bfloat16 --rounds 10 --json out.json
    python benchmarks/bench_lsq.py --suite sizes resnet18 --dtype float32 bfloat16 --markdown out.md
    .venv/bin/python benchmarks/bench_lsq.py --quantizer lsq lsq-arctan lsq+ qil --rounds 10

Suites of tensors: benchmarks/cases.py (main, sizes 4K-256M, every ResNet-18 layer tensor).
Quantizers (--quantizer, default lsq): benchmarks/quantizers.py: lsq, lsq-arctan (LG-LSQ's
soft-round gradient), lsq+ (a learned offset), qil (a learned interval; per tensor only), each
fused op against its own plain-PyTorch reference, on the same tensors.

Providers (each a function f(x, *params) -> y, params the quantizer's learned tensors (LSQ: step),
with the case's bits/signed/axis/grad scale baked in):
  lsq_fast           the quantizer's lsq_fast op (LSQ: lsq_fast.lsq_quantize), backend="auto" ("cpu" on
                     CPU; on CUDA "cuda" or "triton" per lsq_fast/ops/backend_table.json) or --backend;
                     the base of every speed-up (of the same quantizer and case)
  lsq_fast:cuda      backend="cuda", the CUDA C++ kernels (CUDA builds of lsq_fast only; LSQ only:
                     LSQ+ and QIL have none, the row is left out for them)
  lsq_fast:triton    backend="triton", the Triton kernels (CUDA tensors; with TRITON_INTERPRET=1, CPU)
  reference          the quantizer's lsq_fast.reference function, eager PyTorch
  reference+compile  torch.compile of the reference, compiled once per case and dtype
  torch_learnable    torch._fake_quantize_learnable_per_{tensor,channel}_affine (float32 only;
                     for lsq and lsq+ only: its learned zero point plays LSQ+'s offset)
  torchao            torchao's QAT IntxFakeQuantizer with range_learning=True (lsq, signed grids)
  torchao+compile    the same under torch.compile, once per case and dtype
  brevitas           Brevitas's IntQuant, the core of its learned-scale quantizers (lsq)
  nncf               NNCF's symmetric (lsq) and asymmetric (lsq+) quantizers, its CPU extension
                     The peers (benchmarks/peers.py) run when the `peers` extra is installed, each
                     with the case's step in its own parameterisation; where their semantics differ
                     from the contract, the tables say so, and "fwd ≠ reference" is the share of
                     forward outputs off the reference's.

Modes: "fwd" is f under torch.no_grad(); "bwd" is torch.autograd.grad to (x, *params) of an
output computed once beforehand (the graph retained); "fwd+bwd" is f then torch.autograd.grad.

GB/s is the traffic the contract needs, whatever a provider really moves: the forward reads x
and writes y (2 elements), the backward reads x and grad_y and writes grad_x (3 elements), so
fwd+bwd is 5 elements. A fused kernel can reach that; a chain of eager ops moves far more.
The copy ceiling is y.copy_(x) on a tensor of the same size: what the memory system gives
for one read and one write per element, the roof of the forward. The cases' tensors (5-6 MB)
fit in the last-level cache of many CPUs, so on those the ceiling is the cache's, not DRAM's.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

import charts
import lsq_fast
import peers
from cases import SUITES, Case, Inputs, make_inputs, suite_cases  # benchmarks/ is on sys.path as a script
from env_info import environment, keep_freed_memory
from peak_memory import peak_bytes
from quantizers import QUANTIZERS, QuantFn, Quantizer
from report import console_table, markdown_table, write, write_json
from timing import Timing, interleaved_medians

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("fwd", "bwd", "fwd+bwd")
# Elements of x's size that each mode must read or write (see the module docstring).
ELEMENTS_MOVED = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}



# --- providers: each builder returns f(x, *params), or None where the provider cannot run the case.


@dataclass(frozen=True)
class Options:
    backend: str = "auto"  # lsq_fast's backend
    compile_dynamic: bool = False  # compile the reference once for all shapes


def build_lsq_fast(q: Quantizer, case: Case, inp: Inputs, opts: Options) -> Optional[QuantFn]:
    call = q.call(case, inp.grad_scale)
    fused, args, kw = call.fused, call.args, dict(call.kwargs, backend=opts.backend)
    return lambda x, *params: fused(x, *params, *args, **kw)


def build_lsq_fast_backend(backend: str) -> Callable[[Quantizer, Case, Inputs, Options], Optional[QuantFn]]:
    """A provider pinned to one fused backend: each GPU backend beside auto's choice."""

    def build(q: Quantizer, case: Case, inp: Inputs, opts: Options) -> Optional[QuantFn]:
        if not backend_applies(backend, q, inp.x.device):
            return None
        return build_lsq_fast(q, case, inp, dataclasses.replace(opts, backend=backend))

    return build


def backend_applies(backend: str, q: Quantizer, device: torch.device) -> bool:
    """Whether lsq_fast can run quantizer q on `device` with `backend` (LSQ+ and QIL have no CUDA C++ kernels)."""
    return backend in lsq_fast.available_backends(device) and (backend != "cuda" or q.cuda_kernels)


def build_reference(q: Quantizer, case: Case, inp: Inputs, opts: Options = Options()) -> Optional[QuantFn]:
    call = q.call(case, inp.grad_scale)
    return _bind(call.reference, call.args, call.kwargs)


def _bind(fn, args: tuple, kw: dict) -> QuantFn:
    return lambda x, *params: fn(x, *params, *args, **kw)


def build_reference_compiled(q: Quantizer, case: Case, inp: Inputs, opts: Options) -> Optional[QuantFn]:
    # Dynamo caches compiled graphs per code object, so graphs of earlier cases would count
    # against its recompile limit and a second shape would turn on dynamic shapes: start each
    # case from an empty cache and compile for static shapes. Compilation happens in the warm-up.
    # With --compile-dynamic, one graph with symbolic shapes serves every case (many cases, a
    # lease's minutes), compiled on first use.
    call = q.call(case, inp.grad_scale)
    if opts.compile_dynamic:
        compiled = _dynamic_reference(call.reference)
    else:
        compiled = compile_static(call.reference)
    return _bind(compiled, call.args, call.kwargs)


def compile_static(fn: Callable) -> Callable:
    """torch.compile of fn for static shapes, from an empty Dynamo cache (see above)."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


_DYNAMIC_REFERENCE: dict[Callable, Callable] = {}


def _dynamic_reference(fn: Callable) -> Callable:
    if fn not in _DYNAMIC_REFERENCE:
        _DYNAMIC_REFERENCE[fn] = torch.compile(fn, dynamic=True)
    return _DYNAMIC_REFERENCE[fn]


def build_peer(name: str) -> Callable[[Quantizer, Case, Inputs, Options], Optional[QuantFn]]:
    """Another library's quantizer (quantizers.py's peers of q): eager, or under torch.compile
    for "<name>+compile", compiled as the reference is (a fresh cache, static shapes)."""
    peer, compiled = name.removesuffix("+compile"), name.endswith("+compile")

    def build(q: Quantizer, case: Case, inp: Inputs, opts: Options) -> Optional[QuantFn]:
        fn = q.peers[peer](case, inp) if peer in q.peers else None
        return compile_static(fn) if fn is not None and compiled else fn

    return build


PROVIDERS = {
    "lsq_fast": build_lsq_fast,
    "lsq_fast:cuda": build_lsq_fast_backend("cuda"),
    "lsq_fast:triton": build_lsq_fast_backend("triton"),
    "reference": build_reference,
    "reference+compile": build_reference_compiled,
    **{name: build_peer(name) for name in ("torch_learnable", "torchao", "torchao+compile", "brevitas", "nncf")},
}
PEERS = [name for name in PROVIDERS if not name.startswith(("lsq_fast", "reference"))]


def applies(provider: str, q: Quantizer, device: torch.device) -> bool:
    """Whether a provider exists for quantizer q on `device`: pinned lsq_fast backends the device
    (or the quantizer) lacks, and peers that do not compute the quantizer or are not installed,
    are left out rather than reported as rows of "n/a"."""
    if provider.startswith("lsq_fast:"):
        return backend_applies(provider.split(":", 1)[1], q, device)
    if provider in PEERS:
        peer = provider.removesuffix("+compile")
        return peer in q.peers and (peer == "torch_learnable" or peers.available(peer))
    return True


def make_thunk(fn: QuantFn, mode: str, inp: Inputs) -> Callable[[], object]:
    """One timed call of fn in `mode`. autograd.grad rather than backward(): nothing
    accumulates into .grad, so every call does the same work. (On CUDA no call is timed from
    the L2 cache: do_bench flushes it before each, see timing.py.)"""
    if mode == "fwd":

        def run():
            with torch.no_grad():
                return fn(inp.x, *inp.params)

    elif mode == "bwd":
        y = fn(inp.x, *inp.params)

        def run():
            return torch.autograd.grad(y, (inp.x, *inp.params), inp.grad_y, retain_graph=True)

    else:

        def run():
            return torch.autograd.grad(fn(inp.x, *inp.params), (inp.x, *inp.params), inp.grad_y)

    return run


def mismatch_fraction(fn: QuantFn, inp: Inputs, expected: torch.Tensor) -> float:
    """Share of forward outputs that differ from the reference: a guard against timing a
    provider that computes something else. Rounding ties may legitimately differ for
    torch_learnable, which multiplies by 1/scale instead of dividing (and, for lsq+, rounds
    the zero point to an integer)."""
    with torch.no_grad():
        y = fn(inp.x, *inp.params)
    return (y != expected).float().mean().item()


# --- measurement


@dataclass
class Row:
    dtype: str
    case: str
    mode: str
    provider: str
    numel: int = 0
    count: int = 1
    ms: Optional[float] = None  # None: provider not available for this case and dtype
    iqr_pct: Optional[float] = None
    gbps: Optional[float] = None
    pct_of_copy: Optional[float] = None
    speedup: Optional[float] = None  # this provider's time / lsq_fast's time
    inner: Optional[int] = None
    mismatch: Optional[float] = None
    other_cpu: Optional[float] = None  # CPU share other processes took during these rounds
    peak_mb: Optional[float] = None  # fwd+bwd only: the most tensor memory one call holds
    suite: str = ""
    quantizer: str = "lsq"  # benchmarks/quantizers.py


def copy_ceiling(inp: Inputs, rounds: int) -> tuple[float, Optional[float]]:
    """GB/s of y.copy_(x) into a preallocated y (one read and one write per element), and the
    CPU share other processes took meanwhile."""
    src = inp.x.detach()
    dst = torch.empty_like(src)
    # A copy takes well under a millisecond: longer samples make the whole measurement last long
    # enough (a quarter second at 50 rounds) that one short hiccup cannot move the median.
    timing = interleaved_medians({"copy": lambda: dst.copy_(src)}, src.device, rounds=rounds, warmup=10,
                                 min_sample_s=5e-3)["copy"]
    return 2 * src.nbytes / timing.median_s / 1e9, timing.other_cpu


def runnable_providers(
    q: Quantizer, case: Case, inp: Inputs, providers: list[str], opts: Options
) -> tuple[dict[str, QuantFn], dict[str, float]]:
    """The providers that can run the case, each with its share of outputs differing from the
    reference. A provider whose first call fails (say torch.compile without a working compiler)
    is reported and left out rather than ending the benchmark."""
    with torch.no_grad():
        expected = build_reference(q, case, inp)(inp.x, *inp.params)
    fns, mismatch = {}, {}
    for name in providers:
        fn = PROVIDERS[name](q, case, inp, opts)
        if fn is None:
            continue
        try:
            mismatch[name] = mismatch_fraction(fn, inp, expected)
        except Exception as e:  # noqa: BLE001 - any failure means "cannot run here"
            print(f"note: {name} skipped for {q.name} {case.name}: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200]}")
            continue
        fns[name] = fn
    return fns, mismatch


def bench_case(case: Case, dtype_name: str, providers: list[str], device: torch.device, rounds: int,
               opts: Options, modes: list[str], quantizer: str = "lsq",
               copy: Optional[tuple[float, Optional[float]]] = None):
    """Rows of every provider in every mode, plus the copy ceiling (GB/s, other processes' CPU
    share) of x's size: measured, or `copy` where the caller measured it already (for another
    quantizer of the same tensor)."""
    q = QUANTIZERS[quantizer]
    inp = make_inputs(case, DTYPES[dtype_name], device, params=q.params)
    copy_gbps, copy_other_cpu = copy if copy is not None else copy_ceiling(inp, rounds)
    runnable, mismatch = runnable_providers(q, case, inp, providers, opts)

    rows = []
    for mode in modes:
        thunks = {name: make_thunk(fn, mode, inp) for name, fn in runnable.items()}
        timings = interleaved_medians(thunks, device, rounds=rounds)
        bytes_moved = ELEMENTS_MOVED[mode] * inp.x.numel() * inp.x.element_size()
        base = timings.get("lsq_fast")
        peaks = {name: peak_bytes(make_thunk(fn, mode, inp), device) for name, fn in runnable.items()} \
            if mode == "fwd+bwd" else {}
        for name in providers:
            row = Row(dtype_name, case.name, mode, name, case.numel, case.count, mismatch=mismatch.get(name),
                      quantizer=quantizer)
            fill_row(row, timings.get(name), base, bytes_moved, copy_gbps)
            if name in peaks:
                row.peak_mb = peaks[name] / 2**20
            rows.append(row)
    return rows, copy_gbps, copy_other_cpu


def fill_row(row: Row, t: Optional[Timing], base: Optional[Timing], bytes_moved: int, copy_gbps: float) -> None:
    """Fills row's numbers from its timing t (None: the provider did not run) and lsq_fast's."""
    if t is None:
        return
    row.ms = t.median_s * 1e3
    row.iqr_pct = t.iqr_pct
    row.inner = t.inner
    row.other_cpu = t.other_cpu
    row.gbps = bytes_moved / t.median_s / 1e9
    row.pct_of_copy = 100.0 * row.gbps / copy_gbps
    if base is not None and row.provider != "lsq_fast":
        row.speedup = t.median_s / base.median_s


def contention_warnings(rows: list[Row], copy_other_cpu: dict[str, Optional[float]], threshold: float = 0.1):
    """Lines naming the measurements during which other processes took a noticeable share of
    the CPU: on a small shared machine a concurrent build can slow a kernel several-fold."""
    seen = {(r.case, r.mode): r.other_cpu for r in rows if r.other_cpu is not None}
    seen.update({(case, "copy"): v for case, v in copy_other_cpu.items() if v is not None})
    busy = [f"{case} {mode} {100 * v:.0f}%" for (case, mode), v in seen.items() if v > threshold]
    if busy:
        yield f"warning: other processes used CPU while timing ({', '.join(busy)} of the machine); numbers are contended"


# --- environment and output


def fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


HEADER = ("quantizer", "case", "elements", "mode", "provider", "ms", "±IQR", "GB/s", "% of copy", "lsq_fast speed-up",
          "peak MB", "fwd ≠ reference")


def table_lines(rows: list[Row], backend: str) -> list[tuple[str, ...]]:
    lines = []
    for r in rows:
        provider = r.provider if r.provider != "lsq_fast" else f"lsq_fast[{backend}]"
        lines.append(
            (
                r.quantizer,
                r.case,
                f"{r.numel:,}",
                r.mode,
                provider,
                fmt(r.ms, ".3f"),
                fmt(r.iqr_pct, ".0f", "%"),
                fmt(r.gbps, ".1f"),
                fmt(r.pct_of_copy, ".0f", "%"),
                fmt(r.speedup, ".2f", "x") if r.speedup is not None else ("-" if r.ms is not None else "n/a"),
                fmt(r.peak_mb, ".1f") if r.peak_mb is not None else "-",
                agreement(r.mismatch),
            )
        )
    return lines


def agreement(mismatch: Optional[float]) -> str:
    """The share of forward outputs off the reference's: "0" where every one agrees."""
    if mismatch is None:
        return "n/a"
    return "0" if mismatch == 0 else f"{100 * mismatch:.2g}%"


def semantics_notes(rows: list[Row]) -> list[str]:
    """Where the peers in these rows compute something other than the contract (peers.SEMANTICS)."""
    present = dict.fromkeys(r.provider for r in rows if r.ms is not None and r.provider in peers.SEMANTICS)
    return [f"{name}: {peers.SEMANTICS[name]}" for name in present]


def print_table(rows: list[Row], backend: str) -> None:
    print(console_table(HEADER, table_lines(rows, backend), text_columns={0, 1, 3, 4}))


def network_totals(rows: list[Row]) -> dict[tuple[str, str], float]:
    """Milliseconds per network step of each (mode, provider): every tensor's time times its
    count. Only where the provider ran every tensor (else the total would flatter it)."""
    totals: dict[tuple[str, str], float] = {}
    missing = {(r.mode, r.provider) for r in rows if r.ms is None}
    for r in rows:
        if r.ms is not None and (r.mode, r.provider) not in missing:
            totals[(r.mode, r.provider)] = totals.get((r.mode, r.provider), 0.0) + r.ms * r.count
    return totals


def size_chart(rows: list[Row], ceilings: dict[str, float], mode: str, env: dict, dtype: str, path: str,
               quantizer: str = "lsq") -> None:
    """A PNG of GB/s against elements, a line per provider and the copy ceiling (charts.py)."""
    series: dict[str, list[tuple[float, float]]] = {}
    numel = {r.case: r.numel for r in rows}
    for r in rows:
        if r.mode == mode and r.gbps is not None:
            series.setdefault(r.provider, []).append((r.numel, r.gbps))
    charts.size_chart(series, [(numel[case], gbps) for case, gbps in ceilings.items()], path,
                      title=f"{QUANTIZERS[quantizer].title} {mode}, {dtype}, per-tensor activation",
                      subtitle=f"{env['device_name']} ({env['device']}), torch {env['torch']}, "
                      f"commit {env['git_commit']}, {env['date'][:10]}")


def markdown(sections: list[tuple[str, list[Row], dict]], env: dict, args) -> str:
    out = [
        "# lsq_fast kernel benchmark",
        "",
        f"- device: {env['device_name']} ({env['device']}); torch {env['torch']}; triton {env['triton']}; "
        f"CUDA {env['cuda']}; lsq_fast backend `{env['lsq_fast_backend']}`",
        f"- commit {env['git_commit']}, {env['date']}; rounds {args.rounds}; quantizers {', '.join(args.quantizer)} "
        "(benchmarks/quantizers.py; each against its own reference, speed-ups against lsq_fast's op for it)",
        f"- command: `python benchmarks/bench_lsq.py {' '.join(args.argv)}`",
        "- GB/s counts the contract's bytes (fwd 2, bwd 3, fwd+bwd 5 elements of x's size); "
        "% of copy is against a measured same-size device copy (one read, one write per element).",
        "",
    ]
    for title, rows, ceilings in sections:
        out += [f"## {title}", "", "copy ceiling: " + ", ".join(f"{c} {g:.0f} GB/s" for c, g in ceilings.items()), ""]
        out += markdown_table(HEADER, table_lines(rows, env["lsq_fast_backend"]))
        notes = semantics_notes(rows)
        if notes:
            out += ["", "Where the peers' semantics differ from the contract:", ""] + [f"- {n}" for n in notes]
        totals = network_totals(rows)
        if any(r.count > 1 for r in rows) and totals:
            out += ["", "Per network step (each tensor's time x its count):", ""]
            out += [f"- {mode} {provider}: {ms:.2f} ms" for (mode, provider), ms in sorted(totals.items())]
        out.append("")
    return "\n".join(out)


class _NoProgress:
    """What progress_bar returns without tqdm: the same calls, doing nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def progress_bar(total: int):
    """A tqdm bar on stderr, shown only on a terminal (logs stay clean); none without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, disable=None, leave=False, unit="tensor", dynamic_ncols=True)


def parse_size(text: str) -> int:
    """"4096", "64K", "16M" -> elements."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 4096, 64K or 16M)") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", nargs="+", choices=list(SUITES), default=["main"])
    p.add_argument("--quantizer", nargs="+", choices=list(QUANTIZERS), default=["lsq"],
                   help="quantizers to time, each with its fused op and its references (benchmarks/quantizers.py)")
    p.add_argument("--cases", nargs="+", help="only these cases of the suites (names as printed)")
    p.add_argument("--batch", type=int, default=32, help="batch of the resnet18 suite's activations")
    p.add_argument("--max-size", type=parse_size, help="leave out tensors with more elements (e.g. 16M)")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["float32"])
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--rounds", type=int, default=50, help="interleaved timing rounds per case and mode")
    p.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS))
    p.add_argument("--backend", default="auto", help="lsq_fast's backend (default: the fastest for the device)")
    p.add_argument("--compile-dynamic", action="store_true",
                   help="compile the reference once with dynamic shapes instead of once per case")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--markdown", metavar="PATH", help="also write the tables as Markdown to PATH")
    p.add_argument("--plot", metavar="PREFIX",
                   help="PNG of GB/s against size per provider, with the copy ceiling, for the sizes suite: "
                   "PREFIX-<dtype>-<mode>.png")
    p.add_argument(
        "--keep-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve every tensor from glibc's heap and never trim it, so that freed tensor memory is reused "
        "rather than page-faulted in again on every call (default: on)",
    )
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch.cuda.is_available() is False")
    known = {c.name for suite in args.suite for c in SUITES[suite]}
    if args.cases and not set(args.cases) <= known:
        p.error(f"unknown cases {sorted(set(args.cases) - known)}; the suites have {sorted(known)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for the command line in the reports
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    env = environment(device)
    env["keep_freed_memory"] = keep_freed_memory() if args.keep_freed_memory else False
    if args.backend != "auto":
        env["lsq_fast_backend"] = args.backend
    opts = Options(backend=args.backend, compile_dynamic=args.compile_dynamic)
    # Without duplicates, lsq_fast (the baseline of the speed-ups) first.
    providers = sorted(dict.fromkeys(args.providers), key=lambda name: name != "lsq_fast")
    quantizers = list(dict.fromkeys(args.quantizer))

    all_rows, copy_by_dtype, sections = [], {}, []
    measured_copy = {}  # (case, dtype) -> copy ceiling: one measurement serves every quantizer
    plan = {
        suite: [c for c in suite_cases(suite, batch=args.batch, max_numel=args.max_size)
                if not args.cases or c.name in args.cases]
        for suite in args.suite
    }
    for suite in [suite for suite, cases in plan.items() if not cases]:
        print(f"note: no tensor of the {suite} suite is left by --cases and --max-size")
        del plan[suite]
    progress = progress_bar(len(args.dtype) * sum(
        c.group_size is None or QUANTIZERS[q].groups for cases in plan.values() for c in cases for q in quantizers))
    for suite, cases in plan.items():
        for quantizer, dtype_name in itertools.product(quantizers, args.dtype):
            # Providers that do not exist for this quantizer here (a pinned backend the device or
            # the quantizer lacks, torch_learnable beside QIL) are not rows of "n/a": left out.
            q_providers = [p for p in providers if applies(p, QUANTIZERS[quantizer], device)]
            q_cases = [c for c in cases if c.group_size is None or QUANTIZERS[quantizer].groups]
            if not q_cases:  # per-group tensors, a quantizer without groups (QIL)
                continue
            ceilings, copy_other_cpu, rows = {}, {}, []
            for case in q_cases:
                progress.set_description(f"{suite} {quantizer} {dtype_name} {case.name}")
                key = (case.name, case.shape, dtype_name)
                case_rows, ceilings[case.name], copy_other_cpu[case.name] = bench_case(
                    case, dtype_name, q_providers, device, args.rounds, opts, args.modes, quantizer,
                    copy=measured_copy.get(key),
                )
                measured_copy[key] = ceilings[case.name], copy_other_cpu[case.name]
                for row in case_rows:
                    row.suite = suite
                rows += case_rows
                progress.update()
            progress.clear()
            copy_by_dtype.setdefault(dtype_name, {}).update(
                {c: {"gbps": ceilings[c], "other_cpu": copy_other_cpu[c]} for c in ceilings}
            )
            copy_text = ", ".join(f"{name} {gbps:.1f} GB/s" for name, gbps in ceilings.items())
            print(
                f"\n[{suite}] {env['device_name']} ({env['device']}) | quantizer {quantizer} | dtype {dtype_name} | "
                f"threads {env['threads']} | ISA {env['cpu_isa']} | torch {env['torch']} | rounds {args.rounds} | "
                f"keep-freed-memory {'on' if env['keep_freed_memory'] else 'off'} | copy ceiling: {copy_text}"
            )
            print_table(rows, env["lsq_fast_backend"])
            for (mode, provider), ms in sorted(network_totals(rows).items()) if any(r.count > 1 for r in rows) else ():
                print(f"per network step, {mode} {provider}: {ms:.2f} ms")
            for line in semantics_notes(rows):
                print(f"semantics: {line}")
            for line in contention_warnings(rows, copy_other_cpu):
                print(line)
            sys.stdout.flush()
            sections.append((f"{suite}, {dtype_name}, {quantizer}", rows, ceilings))
            all_rows += rows
            if args.plot and suite == "sizes" and not charts.available():
                print("note: matplotlib is not installed (the bench extra): no charts")
            elif args.plot and suite == "sizes":
                for mode in args.modes:
                    # LSQ's charts keep their names; the others' carry the quantizer's.
                    name = "" if quantizer == "lsq" else quantizer.replace("+", "-plus") + "-"
                    path = f"{args.plot}-{name}{dtype_name}-{mode}.png"
                    size_chart(rows, ceilings, mode, env, dtype_name, path, quantizer)
                    print(f"wrote {path}")

    progress.close()
    if args.json:
        write_json(args.json, env, args, bytes_per_element_moved=ELEMENTS_MOVED, copy_ceiling=copy_by_dtype,
                   results=[asdict(r) for r in all_rows])
    if args.markdown:
        write(args.markdown, markdown(sections, env, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
