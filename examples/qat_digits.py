"""Quantization-aware training on real data: the 1,797 handwritten digits that ship inside
scikit-learn (8x8 images, no download), as the LSQ paper does it.

1. Train a small CNN in float.
2. For 4, 3 and 2 bits: quantize the float model (first and last layer at 8 bits) and
   - post-training: lsq_fast.calibrate sets the steps from data, nothing is trained;
   - QAT: fine-tune from the float weights with learned steps (SGD, momentum 0.9, cosine decay,
     LR 0.01, weight decay 1e-4 / 0.5e-4 / 0.25e-4 at 4 / 3 / 2 bits, none on the steps).
3. Print accuracy per bit width and the time per epoch with lsq_fast's quantizer and with the
   reference quantizer (lsq_fast.reference, plain PyTorch ops); plot accuracy against bits.

    python examples/qat_digits.py                 # about a minute on a 2-core CPU
    python examples/qat_digits.py --quick         # the test's short mode
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lsq_fast

WEIGHT_DECAY = {4: 1e-4, 3: 0.5e-4, 2: 0.25e-4}  # the LSQ paper's, per weight bit width


def digits(seed: int = 0):
    """(train images, train labels, test images, test labels): a fixed 80/20 split of
    sklearn's digits, as float32 [N, 1, 8, 8] normalised with the training set's mean and std."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    mean, std = x[:split].mean(), x[:split].std()
    x = (x - mean) / std
    return x[:split], y[:split], x[split:], y[split:]


def small_cnn(classes: int = 10) -> nn.Sequential:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def batches(x, y, size: int, generator: torch.Generator):
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), size):
        yield x[order[i:i + size]], y[order[i:i + size]]


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    was = model.training
    model.eval()
    correct = (model(x).argmax(1) == y).float().mean().item()
    model.train(was)
    return 100.0 * correct


def train(model, data, *, epochs: int, lr: float, weight_decay: float, batch: int, seed: int) -> float:
    """SGD with momentum 0.9 and cosine decay; no weight decay on the quantizers' parameters.
    Returns the mean seconds per epoch."""
    x, y, _, _ = data
    optimizer = torch.optim.SGD(lsq_fast.param_groups(model, weight_decay=weight_decay), lr=lr, momentum=0.9)
    steps = epochs * math.ceil(len(x) / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in batches(x, y, batch, generator):
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return (time.perf_counter() - start) / max(epochs, 1)


def quantized(float_model, bits: int, data, *, backend: str, batch: int) -> nn.Module:
    """A copy of the float model at `bits` (weights and inputs; first and last layer at 8 bits),
    its steps calibrated on the training set and nothing else changed."""
    model = copy.deepcopy(float_model)
    lsq_fast.quantize_model(model, weight_bits=bits, act_bits=bits, backend=backend)
    x = data[0]
    lsq_fast.calibrate(model, [x[:batch * 4]])
    return model


def run(args) -> dict:
    torch.manual_seed(args.seed)
    data = digits(args.seed)
    float_model = small_cnn()
    train(float_model, data, epochs=args.float_epochs, lr=0.05, weight_decay=5e-4, batch=args.batch, seed=args.seed)
    results = {"float": dict(bits=32, ptq=accuracy(float_model, *data[2:]), qat=accuracy(float_model, *data[2:]))}
    for bits in args.bits:
        ptq = quantized(float_model, bits, data, backend="auto", batch=args.batch)
        qat = copy.deepcopy(ptq)  # QAT starts from the calibrated steps
        seconds = train(qat, data, epochs=args.qat_epochs, lr=0.01, weight_decay=WEIGHT_DECAY[bits], batch=args.batch,
                        seed=args.seed)
        row = dict(bits=bits, ptq=accuracy(ptq, *data[2:]), qat=accuracy(qat, *data[2:]), lsq_fast_s=seconds,
                   at_floor=len(lsq_fast.steps_at_floor(qat)))
        if args.time_reference:
            # backend="reference": lsq_fast.reference, the quantizer in plain PyTorch ops
            reference = quantized(float_model, bits, data, backend="reference", batch=args.batch)
            row["reference_s"] = train(reference, data, epochs=min(3, args.qat_epochs), lr=0.01, weight_decay=WEIGHT_DECAY[bits],
                                       batch=args.batch, seed=args.seed)
        results[f"{bits}-bit"] = row
    return results


def table(results: dict) -> str:
    lines = ["| model | post-training accuracy | QAT accuracy | s/epoch lsq_fast | s/epoch reference |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        times = [f"{r[k]:.2f}" if k in r else "" for k in ("lsq_fast_s", "reference_s")]
        ptq = "" if name == "float" else f"{r['ptq']:.1f}%"
        lines.append(f"| {name} | {ptq} | {r['qat']:.1f}% | {times[0]} | {times[1]} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

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
    ax.set_title("sklearn digits, small CNN")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2], choices=sorted(WEIGHT_DECAY))
    p.add_argument("--float-epochs", type=int, default=30)
    p.add_argument("--qat-epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a short run (the test's): 12 float and 6 QAT epochs")
    p.add_argument("--no-reference", dest="time_reference", action="store_false",
                   help="skip timing an epoch with the reference quantizer")
    p.add_argument("--plot", default="qat_digits.png", help="accuracy against bits ('' for none)")
    args = p.parse_args(argv)
    if args.quick:
        args.float_epochs, args.qat_epochs = 12, 6
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = run(args)
    print(table(results))
    if args.plot:
        try:
            plot(results, args.plot)
            print(f"plot: {args.plot}")
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib)")
    return results


if __name__ == "__main__":
    main()
