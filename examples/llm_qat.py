"""Weight-only per-group QAT of a small Llama-shaped language model, on text that ships with
Python: the standard library's own source, read as bytes (a 256-token vocabulary, no tokenizer,
no download).

1. Pretrain the model (benchmarks/llama.py: RMSNorm, causal attention from nn.Linears, a SwiGLU
   MLP, an output head tied to the embedding) in float.
2. From that checkpoint, for each bit width: quantize every Linear of the blocks' weights with a
   learned step per group of --group weights along the input axis (lsq_fast.quantize_model with
   act_bits=None: activations stay float; the tied embedding and head stay float, as LLM QAT
   usually leaves them), calibrate the steps (the post-training baseline), then train on with
   the steps learned (AdamW, no weight decay on the steps: lsq_fast.param_groups). The float
   model trains on for as many steps, from the same checkpoint: the fair comparison.
3. Print held-out loss (nats per byte) and tokens/s, and plot the loss curves.

    python examples/llm_qat.py                  # about 3 minutes on a 2-core CPU
    python examples/llm_qat.py --quick          # the test's short mode
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lsq_fast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from llama import Llama  # noqa: E402  (the benchmark's and the tests' model)


def stdlib_bytes(limit: int) -> torch.Tensor:
    """The first `limit` bytes of the standard library's top-level modules, in name order, as
    uint8 tokens: the same text on every machine with the same Python."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(lib.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


def windows(tokens: torch.Tensor, batch: int, length: int, generator: torch.Generator):
    """A batch of random windows: inputs and their next tokens."""
    starts = torch.randint(0, len(tokens) - length - 1, (batch,), generator=generator)
    rows = torch.stack([tokens[s:s + length + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, length: int, batch: int = 16) -> float:
    """Mean next-byte cross-entropy (nats) over consecutive windows of the held-out text."""
    was = model.training
    model.eval()
    usable = (len(tokens) - 1) // length * length
    inputs, targets = tokens[:usable].view(-1, length), tokens[1:usable + 1].view(-1, length)
    total = 0.0
    for i in range(0, len(inputs), batch):
        logits = model(inputs[i:i + batch])
        total += F.cross_entropy(logits.flatten(0, 1), targets[i:i + batch].flatten(), reduction="sum").item()
    model.train(was)
    return total / targets.numel()


def train(model, tokens, *, steps: int, lr: float, batch: int, length: int, seed: int, eval_tokens, eval_every: int):
    """AdamW (weight decay 0.1 on the model's weights, none on the quantizers' steps), linear
    warm-up over the first tenth, cosine decay. Returns (train losses per step, [(step, held-out
    loss)], tokens per second)."""
    optimizer = torch.optim.AdamW(lsq_fast.param_groups(model, weight_decay=0.1), lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    generator = torch.Generator().manual_seed(seed)
    losses, evals = [], []
    model.train()
    seconds = 0.0
    for step in range(steps):
        x, y = windows(tokens, batch, length, generator)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        seconds += time.perf_counter() - start
        losses.append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evals.append((step + 1, held_out_loss(model, eval_tokens, length)))
    return losses, evals, steps * batch * length / max(seconds, 1e-9)


def run(args) -> dict:
    torch.manual_seed(args.seed)
    text = stdlib_bytes(args.text_bytes)
    split = int(0.9 * len(text))
    train_tokens, eval_tokens = text[:split], text[split:split + args.eval_bytes]
    common = dict(batch=args.batch, length=args.length, eval_tokens=eval_tokens, eval_every=args.eval_every)

    model = Llama(vocab=256, dim=args.dim, layers=args.layers, heads=args.heads, hidden=args.hidden)
    pre_losses, pre_evals, _ = train(model, train_tokens, steps=args.float_steps, lr=args.lr, seed=args.seed, **common)
    results = {"pretrain": dict(losses=pre_losses, evals=pre_evals)}

    float_model = copy.deepcopy(model)
    losses, evals, tps = train(float_model, train_tokens, steps=args.qat_steps, lr=args.qat_lr, seed=args.seed + 1, **common)
    results["float"] = dict(losses=losses, evals=evals, start=evals[0][1], final=evals[-1][1], tokens_s=tps)
    for bits in args.bits:
        quantized = copy.deepcopy(model)
        lsq_fast.quantize_model(quantized, weight_bits=bits, act_bits=None, first_last_bits=None,
                                weight_group_size=args.group, skip=["head"])
        calibration = [windows(train_tokens, args.batch, args.length, torch.Generator().manual_seed(7))[0]]
        lsq_fast.calibrate(quantized, calibration)
        ptq = held_out_loss(quantized, eval_tokens, args.length)
        losses, evals, tps = train(quantized, train_tokens, steps=args.qat_steps, lr=args.qat_lr, seed=args.seed + 1,
                                   **common)
        results[f"{bits}-bit g{args.group}"] = dict(losses=losses, evals=evals, ptq=ptq, final=evals[-1][1], tokens_s=tps,
                                                   at_floor=len(lsq_fast.steps_at_floor(quantized)))
    results["pretrained"] = held_out_loss(model, eval_tokens, args.length)
    return results


def table(results: dict) -> str:
    lines = [f"pretrained float model: held-out loss {results['pretrained']:.3f} nats/byte", "",
             "| model (trained on from the checkpoint) | after calibration | after training | tokens/s |",
             "|---|---:|---:|---:|"]
    for name, r in results.items():
        if name in ("pretrain", "pretrained"):
            continue
        ptq = f"{r['ptq']:.3f}" if "ptq" in r else ""
        lines.append(f"| {name} | {ptq} | {r['final']:.3f} | {r['tokens_s']:,.0f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path | str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = len(results["pretrain"]["losses"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(*zip(*results["pretrain"]["evals"]), color="gray", marker=".", label="float, pretraining")
    for name, r in results.items():
        if name in ("pretrain", "pretrained"):
            continue
        steps, losses = zip(*[(pre + s, v) for s, v in r["evals"]])
        if "ptq" in r:
            steps, losses = (pre, *steps), (r["ptq"], *losses)
        ax.plot(steps, losses, marker=".", label=name if name == "float" else f"{name} weights (QAT)")
    ax.axvline(pre, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss (nats per byte)")
    ax.set_title("Llama-shaped model on Python's standard library source")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path}")
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    p.add_argument("--group", type=int, default=32, help="weights per learned step (along the input axis)")
    p.add_argument("--float-steps", type=int, default=600)
    p.add_argument("--qat-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--qat-lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--text-bytes", type=int, default=2_000_000)
    p.add_argument("--eval-bytes", type=int, default=65_536)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a short run (the test's)")
    p.add_argument("--plot", default="llm_qat.png", help="loss curves ('' for none)")
    args = p.parse_args(argv)
    if args.quick:
        args.float_steps, args.qat_steps, args.eval_every = 150, 60, 30
        args.layers, args.text_bytes, args.eval_bytes = 2, 400_000, 16_384
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = run(args)
    print(table(results))
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
