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

import torch
from torch import nn

import qat_recipe  # examples/: the shared recipe, table and plot
from qat_recipe import WEIGHT_DECAY


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


def run(args) -> dict:
    torch.manual_seed(args.seed)
    x, y, x_test, y_test = digits(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    batches = lambda: qat_recipe.shuffled(x, y, args.batch, generator)  # noqa: E731
    steps = qat_recipe.steps(len(x), args.batch)
    float_model = small_cnn()
    qat_recipe.train(float_model, batches, epochs=args.float_epochs, steps_per_epoch=steps, lr=0.05, weight_decay=5e-4)
    return qat_recipe.compare_bits(float_model, args.bits, batches=batches, steps_per_epoch=steps, test=(x_test, y_test),
                                   calibration=[x[:args.batch * 4]], qat_epochs=args.qat_epochs,
                                   reference_epochs=min(3, args.qat_epochs) if args.time_reference else 0)


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
    return qat_recipe.main(parse_args(argv), run, "sklearn digits, small CNN")


if __name__ == "__main__":
    main()
