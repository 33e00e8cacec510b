"""The main benchmark (`make bench`): kernels against their peers, and the end-to-end cost of QAT.

    .venv/bin/python benchmarks/run.py                 # sized for a CPU: about 10 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --gpu           # sized for a GPU (batch 32 tensors, 4K-64M, bf16 too)
    .venv/bin/python benchmarks/run.py --dtype float32 bfloat16 --providers lsq_fast reference --max-size 1M

Runs benchmarks/bench_lsq.py on the main suite against every peer, on the ResNet-18 tensors
and the size sweep, then benchmarks/bench_qat.py, then bench_lsq.py's main suite for LSQ's
relatives, then the LLM parts (bench_lsq.py --suite llm, bench_qat.py --model llama), and writes
to --out (default benchmarks/results/local/):
  peers.json, peers.md         the main suite's two tensors, float32 and bfloat16, fwd+bwd: lsq_fast
                               against every peer installed (torchao, Brevitas, NNCF: the `peers`
                               extra; PyTorch's learnable op), with where their semantics differ
  kernels.json, kernels.md     every kernel row of lsq_fast, the references and PyTorch's op (time, GB/s, % of copy, speed-ups, peak memory)
  kernels-stock-alloc.*        CPU: lsq_fast and the eager reference again, with glibc's allocator as it comes
  sizes-<dtype>-<mode>.png     GB/s against size per provider, with the measured copy ceiling
  qat.json, qat.md             the ResNet-18 training step: float, lsq_fast, reference quantizer
  family.json, family.md       the main suite's two tensors (activation, weight), float32, for
                               lsq-arctan, lsq+ and qil (benchmarks/quantizers.py): each fused op
                               against its own references (no targets)
  llm.json, llm.md             the llm suite: a Llama-3-8B block's Linear weights with a step per
                               128 weights (and 32, 64 on one shape), bfloat16 and float32, against
                               the reference eager and compiled and torchao's per-group fake
                               quantizer eager and compiled (when torchao is installed)
  llm-step.json, llm-step.md   a Llama-shaped transformer's training step, float, weight-only 4-bit
                               g128 with lsq_fast, and with the reference quantizer (tokens/s)
  summary.md                   the headline numbers against the project's targets
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import torch

import bench_lsq
import bench_qat
import report
from cases import SUITES

# LSQ's relatives that `make bench` also times, on the main suite in float32 (family.*).
FAMILY = ["lsq-arctan", "lsq+", "qil"]

# The targets of the benchmark issue, per device type: lsq_fast's fwd+bwd speed-up over each
# peer on every ResNet-18 tensor, and its QAT overhead against the reference quantizer's.
KERNEL_TARGETS = {
    "cpu": {"reference+compile": 1.3, "reference": 8.0},
    "cuda": {"reference+compile": 1.2, "torch_learnable": 3.0},
}
# The per-group issue's targets on the llm suite (fwd+bwd, groups of 128): speed-up over each
# compiled peer per dtype on every shape, and the share of the copy ceiling on the large shapes
# (16M elements and more) per device type.
LLM_TARGETS = {"bfloat16": 1.5, "float32": 1.2}
LLM_PEERS = ("reference+compile", "torchao+compile")
LLM_COPY_TARGET = {"cpu": 75.0, "cuda": 85.0}
LLM_LARGE = 16 << 20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="the GPU-sized run (needs CUDA)")
    p.add_argument("--dtype", nargs="+", choices=list(bench_lsq.DTYPES),
                   help="default: float32 (CPU), float32 bfloat16 (GPU)")
    p.add_argument("--providers", nargs="+", choices=list(bench_lsq.PROVIDERS), default=list(bench_lsq.PROVIDERS))
    p.add_argument("--max-size", type=bench_lsq.parse_size, help="largest tensor (default: 4M on CPU, 64M on GPU)")
    p.add_argument("--batch", type=int, help="batch of the ResNet-18 tensors (default: 8 on CPU, 32 on GPU)")
    p.add_argument("--rounds", type=int, help="kernel timing rounds (default: 10 on CPU, 20 on GPU)")
    p.add_argument("--modes", nargs="+", choices=list(bench_lsq.MODES),
                   help="kernel modes (default: fwd fwd+bwd on CPU, all three on GPU)")
    p.add_argument("--qat-rounds", type=int, help="training-step timing rounds (default: 5 on CPU, 20 on GPU)")
    p.add_argument("--skip-peers", action="store_true", help="leave out the main suite against every peer")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--skip-qat", action="store_true")
    p.add_argument("--skip-family", action="store_true", help=f"leave out the main suite for {', '.join(FAMILY)}")
    p.add_argument("--skip-llm", action="store_true", help="leave out the llm suite and the transformer step")
    p.add_argument("--llm-rounds", type=int, help="llm suite rounds (default: 5 on CPU, 20 on GPU)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "local")
    args = p.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        p.error("--gpu asked for, but torch.cuda.is_available() is False")
    args.device = "cuda" if args.gpu else "cpu"
    args.dtype = args.dtype or (["float32", "bfloat16"] if args.gpu else ["float32"])
    args.max_size = args.max_size or (64 << 20 if args.gpu else 4 << 20)
    args.batch = args.batch or (32 if args.gpu else 8)
    args.rounds = args.rounds or (20 if args.gpu else 10)
    args.modes = args.modes or (list(bench_lsq.MODES) if args.gpu else ["fwd", "fwd+bwd"])
    args.llm_rounds = args.llm_rounds or (20 if args.gpu else 5)
    return args


CONTENDED = 0.1  # other processes' share of the machine's CPU above which a timing decides nothing
RERUN = {
    "peers": "python benchmarks/bench_lsq.py --suite main --dtype float32 bfloat16 --modes fwd+bwd --rounds 10",
    "kernels": "python benchmarks/run.py --skip-qat --skip-family --skip-llm",
    "llm": "python benchmarks/bench_lsq.py --suite llm --dtype bfloat16 float32 --modes fwd+bwd --rounds 10",
    "qat": "python benchmarks/bench_qat.py --rounds 10",
    "llm-step": "python benchmarks/bench_qat.py --model llama --rounds 10",
}


def contended(rows: list[dict], rerun: str) -> str:
    """" - inconclusive: ..." where other processes took more than CONTENDED of the CPU during
    any of `rows`' rounds (a concurrent build slows a kernel several-fold, and not every
    provider alike), else ""."""
    busy = max((r.get("other_cpu") or 0.0 for r in rows), default=0.0)
    if busy <= CONTENDED:
        return ""
    return f" - inconclusive: other processes used up to {100 * busy:.0f}% of the CPU while timing; rerun on a quiet machine: {rerun}"


def verdict(value: float, target: float, rows: list[dict], rerun: str, *, at_most: bool = False,
            spread_rows: list[dict] | None = None) -> str:
    """The suffix of a target's line: "" (met), " - NOT MET", or " - inconclusive (why; rerun)".

    Inconclusive when the rows were contended (see contended), or when `value` is nearer the target than the spread of the rows that decide it
    (`spread_rows`, default `rows`): a ratio of two medians is uncertain by about the sum of
    their interquartile ranges.
    """
    busy = contended(rows, rerun)
    if busy:
        return busy
    spread = sum(r.get("iqr_pct") or 0.0 for r in (rows if spread_rows is None else spread_rows))
    if 100 * abs(value / target - 1) < spread:
        return f" - inconclusive: within the timings' spread (IQR {spread:.0f}%); rerun with more rounds: {rerun}"
    return "" if (value <= target if at_most else value >= target) else " - NOT MET"


def kernel_verdicts(rows: list[dict], device_type: str) -> list[str]:
    """One line per target: the smallest fwd+bwd speed-up over the ResNet-18 tensors (LSQ's)."""
    lines = []
    for peer, target in KERNEL_TARGETS[device_type].items():
        speedups = {
            (r["dtype"], r["case"]): r["speedup"]
            for r in rows
            if r["suite"] == "resnet18" and r["mode"] == "fwd+bwd" and r["provider"] == peer and r["speedup"] is not None
            and r.get("quantizer", "lsq") == "lsq"
        }
        if not speedups:
            continue
        (dtype, case), worst = min(speedups.items(), key=lambda item: item[1])
        met = sum(s >= target for s in speedups.values())
        timed = [r for r in rows if r["suite"] == "resnet18" and r["mode"] == "fwd+bwd"
                 and r["provider"] in (peer, "lsq_fast") and r.get("quantizer", "lsq") == "lsq"]
        lines.append(
            f"- fwd+bwd vs {peer}: target {target}x on every ResNet-18 tensor; met on {met}/{len(speedups)}; "
            f"smallest {worst:.2f}x ({case}, {dtype})"
            + verdict(worst, target, timed, RERUN["kernels"],
                      spread_rows=[r for r in timed if (r["dtype"], r["case"]) == (dtype, case)])
        )
    return lines


def llm_verdicts(rows: list[dict], device_type: str) -> list[str]:
    """The llm suite against LLM_TARGETS: per dtype and compiled peer, the smallest fwd+bwd
    speed-up over the group-128 shapes; per dtype, the smallest share of copy on the large ones."""
    lines = []
    g128_cases = {c.name for c in SUITES["llm"] if c.group_size == 128}
    g128 = [r for r in rows if r["mode"] == "fwd+bwd" and r["case"] in g128_cases]
    for dtype, target in LLM_TARGETS.items():
        for peer in LLM_PEERS:
            speedups = {r["case"]: r["speedup"] for r in g128
                        if r["dtype"] == dtype and r["provider"] == peer and r["speedup"] is not None}
            if not speedups:
                continue
            case, worst = min(speedups.items(), key=lambda item: item[1])
            met = sum(v >= target for v in speedups.values())
            timed = [r for r in g128 if r["dtype"] == dtype and r["provider"] in (peer, "lsq_fast")]
            lines.append(f"- {dtype}, fwd+bwd vs {peer}: target {target}x on every group-128 shape; met on "
                         f"{met}/{len(speedups)}; smallest {worst:.2f}x ({case})"
                         + verdict(worst, target, timed, RERUN["llm"], spread_rows=[r for r in timed if r["case"] == case]))
        large = [r for r in g128 if r["dtype"] == dtype and r["provider"] == "lsq_fast"
                 and r["numel"] >= LLM_LARGE and r["pct_of_copy"] is not None]
        if large:
            worst_row = min(large, key=lambda r: r["pct_of_copy"])
            target = LLM_COPY_TARGET[device_type]
            lines.append(f"- {dtype}, lsq_fast's fwd+bwd share of the copy ceiling on the large shapes: target "
                         f"{target:.0f}%; smallest {worst_row['pct_of_copy']:.0f}% ({worst_row['case']})"
                         + verdict(worst_row["pct_of_copy"], target, large, RERUN["llm"], spread_rows=[worst_row]))
    return lines


def peer_lines(rows: list[dict]) -> list[str]:
    """One line per peer: lsq_fast's fwd+bwd speed-up over it on each tensor and dtype, and the
    share of its forward outputs off the reference's (facts, no targets; inconclusive where
    other processes took the CPU)."""
    lines = []
    timed = [r for r in rows if r["mode"] == "fwd+bwd" and r["ms"] is not None]
    for peer in dict.fromkeys(r["provider"] for r in timed if r["speedup"] is not None):
        mine = [r for r in timed if r["provider"] == peer]
        parts = [f"{r['case']} {r['dtype']} {r['speedup']:.2f}x (fwd ≠ reference {bench_lsq.agreement(r['mismatch'])})"
                 for r in mine]
        lines.append(f"- lsq_fast vs {peer}: " + "; ".join(parts)
                     + contended([r for r in timed if r["provider"] in (peer, "lsq_fast")], RERUN["peers"]))
    return lines


def family_lines(rows: list[dict]) -> list[str]:
    """One line per quantizer: lsq_fast's fwd+bwd time per tensor and each peer's time as a
    multiple of it (facts, no targets)."""
    lines = []
    for quantizer in dict.fromkeys(r["quantizer"] for r in rows):
        mine = [r for r in rows if r["quantizer"] == quantizer and r["mode"] == "fwd+bwd" and r["ms"] is not None]
        if not mine:
            continue
        parts = []
        for case in dict.fromkeys(r["case"] for r in mine):
            by = {r["provider"]: r for r in mine if r["case"] == case}
            if "lsq_fast" not in by:
                continue
            peers = ", ".join(f"{p} {r['speedup']:.2f}x" for p, r in by.items() if r["speedup"] is not None)
            parts.append(f"{case} {by['lsq_fast']['ms']:.3f} ms" + (f" ({peers})" if peers else ""))
        lines.append(f"- {quantizer}, fwd+bwd, lsq_fast: " + "; ".join(parts))
    return lines


def qat_verdict(rows: list[dict], device_type: str, targets: bool = True, rerun: str = RERUN["qat"]) -> list[str]:
    """The training step's overheads; with `targets`, against the ResNet-18 step's targets. A
    negative overhead (a quantized step faster than float's) cannot be real: it is noise, and
    every line says so rather than give a verdict."""
    by = {r["variant"]: bench_qat.QatRow(**r) for r in rows}
    if "lsq_fast" not in by or by["lsq_fast"].overhead_pct is None:
        return []
    ours = by["lsq_fast"].overhead_pct
    lines = [f"- QAT overhead over float: lsq_fast {ours:+.1f}%"
             + (f", reference quantizer {by['reference'].overhead_pct:+.1f}%" if "reference" in by else "")]
    negative = [name for name, r in by.items() if r.overhead_pct is not None and r.overhead_pct < 0]
    if negative:
        return lines + [f"- inconclusive: {' and '.join(negative)} timed faster than float training, which the "
                        f"quantizers' extra work rules out (the machine was busy, or the step is too short to time); "
                        f"rerun on a quiet machine: {rerun}"]
    timed = [dataclasses.asdict(r) for r in by.values()]
    ratio = bench_qat.overhead_ratio(list(by.values()))
    if not targets:
        return lines + ([f"- lsq_fast's overhead is {100 * ratio:.0f}% of the reference's"] if ratio is not None else [])
    if ratio is not None:
        lines.append(f"- lsq_fast's overhead is {100 * ratio:.0f}% of the reference's (target: at most 50%)"
                     + verdict(ratio, 0.5, timed, rerun, at_most=True))
    if device_type == "cuda":
        lines.append("- target on GPU: lsq_fast's overhead under 10%"
                     + verdict(ours, 10.0, timed, rerun, at_most=True))
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out
    run_family = not args.skip_kernels and not args.skip_family
    stale = ((["peers.*"] if not args.skip_peers else [])
             + (["kernels*", "sizes-*.png"] if not args.skip_kernels else []) + (["qat.*"] if not args.skip_qat else [])
             + (["family.*"] if run_family else []) + (["llm.*", "llm-step.*"] if not args.skip_llm else []))
    for pattern in stale:  # a part that runs replaces all it wrote last time
        for path in out.glob(pattern):
            path.unlink()
    if not args.skip_peers:
        bench_lsq.main([
            "--device", args.device, "--suite", "main", "--dtype", "float32", "bfloat16", "--providers", *args.providers,
            "--modes", "fwd+bwd", "--rounds", str(args.rounds), "--json", str(out / "peers.json"),
            "--markdown", str(out / "peers.md"),
        ])
    if not args.skip_kernels:
        # The other libraries' peers are timed on the main suite (above); here, the references
        # and PyTorch's own op on every ResNet-18 tensor and size.
        kernel_providers = [p for p in args.providers if p not in bench_lsq.PEERS or p == "torch_learnable"]
        bench_lsq.main([
            "--device", args.device, "--suite", "resnet18", "sizes", "--batch", str(args.batch),
            "--max-size", str(args.max_size), "--dtype", *args.dtype, "--providers", *kernel_providers, "--modes", *args.modes,
            "--rounds", str(args.rounds), "--json", str(out / "kernels.json"), "--markdown", str(out / "kernels.md"),
            "--plot", str(out / "sizes"),
        ])
    if not args.skip_kernels and args.device == "cpu" and "reference" in args.providers:
        # glibc as it comes returns freed memory to the OS and faults it back in on every call,
        # which costs the eager reference (many temporaries) most. The main run keeps freed
        # memory (see bench_lsq.keep_freed_memory); this one measures what users get by
        # default, in a fresh process since the setting cannot be undone.
        subprocess.run([
            sys.executable, str(Path(__file__).with_name("bench_lsq.py")), "--device", "cpu", "--suite", "resnet18",
            "--batch", str(args.batch), "--dtype", *args.dtype, "--modes", "fwd+bwd", "--providers", "lsq_fast",
            "reference", "--rounds", str(args.rounds), "--no-keep-freed-memory", "--json", str(out / "kernels-stock-alloc.json"),
            "--markdown", str(out / "kernels-stock-alloc.md"),
        ], check=True)
    if not args.skip_qat:
        rounds = ["--rounds", str(args.qat_rounds)] if args.qat_rounds else []
        bench_qat.main(["--device", args.device, *rounds, "--json", str(out / "qat.json"), "--markdown", str(out / "qat.md")])
    if run_family:
        bench_lsq.main([
            "--device", args.device, "--suite", "main", "--quantizer", *FAMILY, "--max-size", str(args.max_size),
            "--dtype", "float32", "--providers", *args.providers, "--modes", *args.modes, "--rounds", str(args.rounds),
            "--json", str(out / "family.json"), "--markdown", str(out / "family.md"),
        ])
    if not args.skip_llm:
        llm_providers = [p for p in args.providers if p == "lsq_fast" or p.startswith(("reference", "torchao"))]
        bench_lsq.main([
            "--device", args.device, "--suite", "llm", "--dtype", "bfloat16", "float32", "--providers", *llm_providers,
            "--modes", "fwd+bwd", "--rounds", str(args.llm_rounds), "--json", str(out / "llm.json"),
            "--markdown", str(out / "llm.md"),
        ])
        rounds = ["--rounds", str(args.qat_rounds)] if args.qat_rounds else []
        bench_qat.main(["--device", args.device, "--model", "llama", *rounds, "--json", str(out / "llm-step.json"),
                        "--markdown", str(out / "llm-step.md")])

    summary = ["# lsq_fast benchmark summary", ""]
    env = None
    if not args.skip_peers and (out / "peers.json").exists():
        peer_rows = json.loads((out / "peers.json").read_text())
        env = peer_rows["environment"]
        summary += ["## Peers (main suite, fwd+bwd)", "", *peer_lines(peer_rows["results"]), "",
                    "Tables, and where each peer's semantics differ: [peers.md](peers.md)", ""]
    if (out / "kernels.json").exists() and not args.skip_kernels:
        kernels = json.loads((out / "kernels.json").read_text())
        env = kernels["environment"]
        verdicts = kernel_verdicts(kernels["results"], args.device)
        if (out / "kernels-stock-alloc.json").exists():
            stock = json.loads((out / "kernels-stock-alloc.json").read_text())["results"]
            verdicts += [line.replace("- fwd+bwd vs reference:", "- with glibc's stock allocator, fwd+bwd vs reference:")
                         for line in kernel_verdicts(stock, args.device) if "vs reference:" in line]
        summary += ["## Kernels (ResNet-18 tensors, fwd+bwd)", "", *verdicts, "",
                    "Tables: [kernels.md](kernels.md); GB/s against size: "
                    + ", ".join(f"[{p.name}]({p.name})" for p in sorted(out.glob("sizes-*.png"))), ""]
    if (out / "qat.json").exists() and not args.skip_qat:
        qat = json.loads((out / "qat.json").read_text())
        env = env or qat["environment"]
        verdicts = qat_verdict(qat["results"], args.device)
        summary += ["## End to end (ResNet-18 training step)", "", *verdicts, "",
                    (out / "qat.md").read_text(), ""]
    family = json.loads((out / "family.json").read_text()) if run_family and (out / "family.json").exists() else None
    if family and family["results"]:  # none where --max-size leaves out the main suite's tensors
        env = env or family["environment"]
        summary += [f"## LSQ's relatives ({', '.join(FAMILY)}; main suite, float32)", "",
                    "Each provider's time as a multiple of lsq_fast's for the same quantizer and tensor "
                    "(no targets):", "", *family_lines(family["results"]), "", "Tables: [family.md](family.md)", ""]
    if not args.skip_llm and (out / "llm.json").exists():
        llm = json.loads((out / "llm.json").read_text())
        env = env or llm["environment"]
        summary += ["## LLM weights, a step per group (llm suite, fwd+bwd)", "", *llm_verdicts(llm["results"], args.device),
                    "", "Tables: [llm.md](llm.md)", ""]
    if not args.skip_llm and (out / "llm-step.json").exists():
        step = json.loads((out / "llm-step.json").read_text())
        summary += ["## End to end (Llama-shaped transformer, weight-only 4-bit g128)", "",
                    *qat_verdict(step["results"], args.device, targets=False, rerun=RERUN["llm-step"]), "", (out / "llm-step.md").read_text(), ""]
    if env:
        summary[1:1] = ["", f"{env['device_name']} ({env['device']}), torch {env['torch']}, triton {env['triton']}, "
                        f"commit {env['git_commit']}, {env['date']}", ""]
    print("\n" + "\n".join(summary))
    report.write(out / "summary.md", "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
