"""End-to-end cost of quantization-aware training: one training step, three ways.

    .venv/bin/python benchmarks/bench_qat.py                       # CPU: ResNet-18, batch 8, float32
    python benchmarks/bench_qat.py --device cuda                   # GPU: batch 256, bf16 autocast
    .venv/bin/python benchmarks/bench_qat.py --model llama         # weight-only LLM QAT (see below)

Models (--model), each from the same seed:
  resnet18   benchmarks/resnet18.py; quantize_model(model): weights and activations at 4 bits, first
             and last layer at 8 (the LSQ paper's recipe); images of --size, --batch per step
  llama      benchmarks/llama.py (RMSNorm, attention, SwiGLU, tied embedding; LLAMA_SIZES per
             device); weight-only QAT as LLM QAT runs it: quantize_model(model, weight_bits=4,
             act_bits=None, weight_group_size=128, quantize_embeddings=True), every Linear and the
             tied embedding at 4 bits with a step per 128 weights; --batch sequences of --size
             tokens, next-token cross-entropy; throughput in tokens/s

Variants:
  float      no quantizers
  lsq_fast   the model quantized as above, lsq_fast's fused kernels (backend "auto")
  reference  the same quantized model with backend="reference": the paper's quantizer in plain
             PyTorch (lsq_fast.reference), what users write today

A step is zero_grad, forward, cross-entropy, backward and an SGD step (momentum 0.9, weight
decay 1e-4), timed as interleaved medians (benchmarks/timing.py) after the first step (which
initialises the quantizers). QAT overhead = step time / float step time - 1. Peak memory is the
most tensor memory one step holds above what is live between steps (weights, momentum).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import lsq_fast
from env_info import environment, keep_freed_memory
from peak_memory import peak_bytes
from report import console_table, markdown_table, write, write_json
from llama import Llama
from resnet18 import ResNet18
from timing import interleaved_medians

VARIANTS = {"float": None, "lsq_fast": "auto", "reference": "reference"}  # variant -> quantizer backend

# The llama model per device type: on the CPU small enough for a step of about a second; on a
# GPU a quarter of a Llama-2-7B block's width, four blocks. Every Linear's input dimension and
# the embedding's width are multiples of the group size, 128.
LLAMA_SIZES = {
    "cpu": dict(vocab=4096, dim=512, layers=2, heads=8, hidden=1536),
    "cuda": dict(vocab=32000, dim=2048, layers=4, heads=16, hidden=5632),
}
GROUP_SIZE = 128


@dataclass
class QatRow:
    variant: str
    batch: int
    dtype: str
    ms: float
    iqr_pct: float
    samples_per_s: float  # images (resnet18) or tokens (llama) per second
    peak_mb: float
    overhead_pct: Optional[float] = None  # over the float step; None for float itself
    model: str = "resnet18"
    unit: str = "images"
    other_cpu: Optional[float] = None  # CPU share other processes took during the rounds


def build(model_name: str, variant: str, device: torch.device, batch: int, size: int):
    """The variant's model (quantized as the module docstring says), one batch of inputs and
    targets for it, the samples that batch holds and their unit."""
    generator = torch.Generator().manual_seed(1)
    backend = VARIANTS[variant]
    if model_name == "resnet18":
        model = ResNet18()
        if backend is not None:
            lsq_fast.quantize_model(model, weight_bits=4, act_bits=4, first_last_bits=8, backend=backend)
        memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        model.to(device=device, memory_format=memory_format)
        images = torch.randn(batch, 3, size, size, generator=generator).to(device, memory_format=memory_format)
        labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)
        return model, images, labels, batch, "images"
    sizes = LLAMA_SIZES[device.type]
    model = Llama(**sizes)
    if backend is not None:
        lsq_fast.quantize_model(model, weight_bits=4, act_bits=None, first_last_bits=None,
                                weight_group_size=GROUP_SIZE, quantize_embeddings=True, backend=backend)
    model.to(device)
    tokens = torch.randint(0, sizes["vocab"], (batch, size + 1), generator=generator).to(device)
    return model, tokens[:, :-1], tokens[:, 1:].reshape(-1), batch * size, "tokens"


def training_step(variant: str, device: torch.device, batch: int, size: int, amp_dtype: Optional[torch.dtype],
                  model_name: str = "resnet18") -> tuple[Callable[[], None], int, str]:
    """A closure running one training step of the variant's model (made and initialised here),
    the samples a step processes and their unit."""
    torch.manual_seed(0)
    model, inputs, targets, samples, unit = build(model_name, variant, device, batch, size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(inputs)
            loss = F.cross_entropy(logits.reshape(targets.numel(), -1), targets)
        loss.backward()
        optimizer.step()

    step()  # initialises the quantizers (and the optimizer's momentum)
    return step, samples, unit


def run(device: torch.device, batch: int, size: int, amp_dtype: Optional[torch.dtype], rounds: int,
        variants: list[str], model: str = "resnet18") -> list[QatRow]:
    built = {name: training_step(name, device, batch, size, amp_dtype, model) for name in variants}
    steps = {name: step for name, (step, _, _) in built.items()}
    peaks = {name: peak_bytes(step, device) for name, step in steps.items()}
    timings = interleaved_medians(steps, device, rounds=rounds, warmup=1, min_sample_s=0)
    dtype = str(amp_dtype).removeprefix("torch.") if amp_dtype else "float32"
    rows = []
    for name in variants:
        t, (_, samples, unit) = timings[name], built[name]
        row = QatRow(name, batch, dtype, t.median_s * 1e3, t.iqr_pct, samples / t.median_s, peaks[name] / 2**20,
                     model=model, unit=unit, other_cpu=t.other_cpu)
        if name != "float" and "float" in timings:
            row.overhead_pct = 100.0 * (t.median_s / timings["float"].median_s - 1)
        rows.append(row)
    return rows


def header(rows: list[QatRow]) -> tuple[str, ...]:
    return ("variant", "batch", "dtype", "step ms", "±IQR", f"{rows[0].unit}/s", "peak MB", "QAT overhead")


TITLES = {"resnet18": "ResNet-18 training step", "llama": "Llama-shaped transformer training step, weight-only 4-bit g128"}


def table_lines(rows: list[QatRow]) -> list[tuple[str, ...]]:
    return [
        (
            r.variant,
            str(r.batch),
            r.dtype,
            f"{r.ms:.1f}",
            f"{r.iqr_pct:.0f}%",
            f"{r.samples_per_s:.1f}",
            f"{r.peak_mb:.0f}",
            "-" if r.overhead_pct is None else f"{r.overhead_pct:+.1f}%",
        )
        for r in rows
    ]


def overhead_ratio(rows: list[QatRow]) -> Optional[float]:
    """lsq_fast's QAT overhead as a fraction of the reference's (the target: at most 0.5)."""
    by = {r.variant: r.overhead_pct for r in rows}
    if by.get("lsq_fast") is None or not by.get("reference"):
        return None
    return by["lsq_fast"] / by["reference"]


def markdown(rows: list[QatRow], env: dict, args) -> str:
    lines = table_lines(rows)
    shape = f"{args.size}x{args.size} images" if args.model == "resnet18" else f"sequences of {args.size} tokens, {LLAMA_SIZES[env['device']]}"
    out = [
        f"### {TITLES[args.model]}, {env['device_name']}",
        "",
        f"- batch {args.batch}, {shape}, {rows[0].dtype}; rounds {args.rounds}; "
        f"commit {env['git_commit']}, {env['date']}",
        f"- command: `python benchmarks/bench_qat.py {' '.join(args.argv)}`",
        "",
        *markdown_table(header(rows), lines),
    ]
    ratio = overhead_ratio(rows)
    if ratio is not None:
        out += ["", f"lsq_fast's QAT overhead is {100 * ratio:.0f}% of the reference quantizer's."]
    return "\n".join(out) + "\n"


def print_table(rows: list[QatRow]) -> None:
    print(console_table(header(rows), table_lines(rows), text_columns={0, 2}))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=["resnet18", "llama"], default="resnet18")
    p.add_argument("--batch", type=int, help="images (sequences) per step (default resnet18: 256 on CUDA, 8 on "
                   "CPU; llama: 16 on CUDA, 4 on CPU)")
    p.add_argument("--size", type=int, help="image side (default 224), or tokens per sequence (llama: 1024 on "
                   "CUDA, 128 on CPU)")
    p.add_argument("--amp", choices=["none", "bfloat16", "float16"],
                   help="autocast dtype (default: bfloat16 on CUDA, none on CPU)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch.cuda.is_available() is False")
    llama = args.model == "llama"
    args.batch = args.batch or ((16 if cuda else 4) if llama else (256 if cuda else 8))
    args.size = args.size or ((1024 if cuda else 128) if llama else 224)
    args.amp = args.amp or ("bfloat16" if cuda else "none")
    args.rounds = args.rounds or (20 if cuda else 5)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for the command line in the reports
    device = torch.device(args.device)
    env = environment(device)
    env["keep_freed_memory"] = keep_freed_memory()
    amp_dtype = None if args.amp == "none" else getattr(torch, args.amp)
    rows = run(device, args.batch, args.size, amp_dtype, args.rounds, args.variants, args.model)
    print(f"\n[qat] {TITLES[args.model]} | {env['device_name']} ({env['device']}) | batch {args.batch} | "
          f"size {args.size} | {rows[0].dtype} | rounds {args.rounds}")
    print_table(rows)
    ratio = overhead_ratio(rows)
    if ratio is not None:
        print(f"lsq_fast's QAT overhead is {100 * ratio:.0f}% of the reference quantizer's")
    if args.json:
        write_json(args.json, env, args, results=[asdict(r) for r in rows])
    if args.markdown:
        write(args.markdown, markdown(rows, env, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
