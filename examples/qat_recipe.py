"""The LSQ paper's fine-tuning recipe, shared by the image examples (qat_digits.py on sklearn's
digits, qat_cifar10.py on CIFAR-10): train in float, then for each bit width quantize a copy
(first and last layer at 8 bits), calibrate its steps (the post-training baseline) and fine-tune
it from the float weights with learned steps: SGD with momentum 0.9, cosine decay, no weight
decay on the quantizers' parameters (lsq_fast.param_groups). Plus the results' table and plot.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

import lsq_fast

WEIGHT_DECAY = {4: 1e-4, 3: 0.5e-4, 2: 0.25e-4}  # the LSQ paper's, per weight bit width
Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # one epoch's (inputs, labels)


def shuffled(x: torch.Tensor, y: torch.Tensor, size: int, generator: torch.Generator):
    """One epoch of (x, y) in batches of `size`, in a random order."""
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for i in range(0, len(x), size):
        yield x[order[i:i + size]], y[order[i:i + size]]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in percent, in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    model.train(was)
    return 100.0 * correct / len(x)


def train(model: nn.Module, batches: Batches, *, epochs: int, steps_per_epoch: int, lr: float,
          weight_decay: float) -> float:
    """SGD with momentum 0.9 and cosine decay over every step; no weight decay on the
    quantizers' parameters. Returns the mean seconds per epoch."""
    optimizer = torch.optim.SGD(lsq_fast.param_groups(model, weight_decay=weight_decay), lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch))
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in batches():
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(epochs, 1)


def quantized(float_model: nn.Module, bits: int, calibration: list[torch.Tensor], *, backend: str = "auto") -> nn.Module:
    """A copy of the float model at `bits` (weights and inputs; first and last layer at 8 bits),
    its steps calibrated on `calibration` batches and nothing else changed."""
    model = copy.deepcopy(float_model)
    lsq_fast.quantize_model(model, weight_bits=bits, act_bits=bits, backend=backend)
    lsq_fast.calibrate(model, calibration)
    return model


def compare_bits(float_model: nn.Module, bits: Iterable[int], *, batches: Batches, steps_per_epoch: int,
                 test: tuple[torch.Tensor, torch.Tensor], calibration: list[torch.Tensor], qat_epochs: int,
                 lr: float = 0.01, reference_epochs: int = 0) -> dict:
    """{"float": ..., "<b>-bit": ...} rows: accuracy after calibration only (ptq) and after QAT,
    seconds per QAT epoch with lsq_fast (and, with reference_epochs, with the reference
    quantizer over that many epochs), and how many steps ended at their floor."""
    float_acc = accuracy(float_model, *test)
    results = {"float": dict(bits=32, ptq=float_acc, qat=float_acc)}
    for b in bits:
        ptq = quantized(float_model, b, calibration)
        qat = copy.deepcopy(ptq)  # QAT starts from the calibrated steps
        seconds = train(qat, batches, epochs=qat_epochs, steps_per_epoch=steps_per_epoch, lr=lr,
                        weight_decay=WEIGHT_DECAY[b])
        row = dict(bits=b, ptq=accuracy(ptq, *test), qat=accuracy(qat, *test), lsq_fast_s=seconds,
                   at_floor=len(lsq_fast.steps_at_floor(qat)))
        if reference_epochs:
            # backend="reference": lsq_fast.reference, the quantizer in plain PyTorch ops
            reference = quantized(float_model, b, calibration, backend="reference")
            row["reference_s"] = train(reference, batches, epochs=reference_epochs, steps_per_epoch=steps_per_epoch,
                                       lr=lr, weight_decay=WEIGHT_DECAY[b])
        results[f"{b}-bit"] = row
    return results


def table(results: dict) -> str:
    lines = ["| model | post-training accuracy | QAT accuracy | s/epoch lsq_fast | s/epoch reference |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        times = [f"{r[k]:.2f}" if k in r else "" for k in ("lsq_fast_s", "reference_s")]
        ptq = "" if name == "float" else f"{r['ptq']:.1f}%"
        lines.append(f"| {name} | {ptq} | {r['qat']:.1f}% | {times[0]} | {times[1]} |")
    return "\n".join(lines)


def plot(results: dict, path: Path | str, title: str) -> bool:
    """Accuracy against bits, QAT and post-training, float as a line; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for name, r in results.items() if name != "float"]
    bits = [r["bits"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(bits, [r["qat"] for r in rows], "o-", label="QAT with lsq_fast (LSQ)")
    ax.plot(bits, [r["ptq"] for r in rows], "s--", label="post-training (calibrated, no training)")
    ax.axhline(results["float"]["qat"], color="gray", linestyle=":", label="float")
    ax.set_xticks(bits)
    ax.set_xlabel("bits (weights and activations; first and last layer 8)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path}")
    return True


def main(args, run: Callable, title: str) -> dict:
    """An example's main: run(args), print the table, plot to args.plot (unless '')."""
    results = run(args)
    print(table(results))
    if args.plot:
        plot(results, args.plot, title)
    return results


def steps(n: int, batch: int) -> int:
    return math.ceil(n / batch)
