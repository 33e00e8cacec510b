"""Small float models for the module tests: a CNN with the layer kinds quantize_model converts."""

from __future__ import annotations

import torch
from torch import nn


def small_cnn(batch_norm: bool = False, classes: int = 10) -> nn.Sequential:
    """conv (the first layer, sees the image) -> conv -> conv -> pool -> linear (the last)."""

    def block(cin, cout, stride):
        layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batch_norm)]
        return layers + ([nn.BatchNorm2d(cout)] if batch_norm else []) + [nn.ReLU()]

    return nn.Sequential(
        *block(3, 8, 1),
        *block(8, 16, 2),
        *block(16, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    )


def toy_task(n: int = 32, size: int = 12, classes: int = 10, generator: torch.Generator | None = None):
    """Images (normalised: negative values too) and labels a small CNN can fit in a few steps."""
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return images, labels
