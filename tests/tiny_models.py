"""Small float models for the module tests: a CNN with the layer kinds quantize_model converts, an MLP."""

from __future__ import annotations

import torch
from torch import nn

# The LSQ family's training runs of the module tests: quantize_model's options per method.
METHODS = {
    "lsq": dict(),
    # LG-LSQ's soft round is for low bits. At 8 bits (the first and last layers by default) its
    # step gradient, round(u) - u * slope(u) with |u| up to 127, is noisy: on about 1 seed in
    # 13 the first layer's weight step is driven to its floor and the toy network collapses.
    "lsq-arctan": dict(round_grad="arctan", first_last_bits=None),
    "lsq+": dict(method="lsq+"),
    "qil": dict(method="qil"),
}
# QIL's interval parameters get the sum of their elements' gradients, unscaled (the contract has no
# g for QIL): at the network's learning rate one step moves the intervals past every weight,
# everything is pruned and nothing learns again. A smaller rate for them, as QIL training does.
INTERVAL_LR = {"lsq": None, "lsq-arctan": None, "lsq+": None, "qil": 0.001}
# The last loss over the first that a 40-step run must beat: the worst of 500 seeds with a
# margin of 0.15 or more, still well short of no learning (1.0). Measured 2026-12-03 with
# tests/calibrate_training.py --seeds 500 (median / 99th percentile / worst): lsq 0.29 / 0.40 /
# 0.43, lsq-arctan 0.36 / 0.49 / 0.53, lsq+ 0.31 / 0.45 / 0.74 (seed 103, the one seed past 0.7:
# its loss plateaus), qil 0.006 / 0.07 / 0.19.
PASS_MARK = {"lsq": 0.6, "lsq-arctan": 0.7, "lsq+": 0.9, "qil": 0.4}


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


def small_mlp(sizes=(64, 128, 64, 10)) -> nn.Sequential:
    """Linear 64-128-64-10 with ReLUs between: the shape of a transformer's MLP, small."""
    layers = []
    for cin, cout in zip(sizes, sizes[1:]):
        layers += [nn.Linear(cin, cout), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def toy_task(n: int = 32, size: int = 12, classes: int = 10, generator: torch.Generator | None = None):
    """Images (normalised: negative values too) and labels a small CNN can fit in a few steps."""
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return images, labels


def train_small_cnn(model: nn.Module, images, labels, steps: int = 40, interval_lr: float | None = None,
                    after_first_backward=None) -> list[float]:
    """SGD (lr 0.05, momentum 0.9) on the full batch for `steps` steps; the losses. QIL's
    interval parameters ("quantizer." centre, distance, gamma) get `interval_lr` where given: they
    take unscaled sums of gradients (test_modules.py). after_first_backward(model) runs once,
    after the first backward (the initialised parameters and their first gradients)."""
    import torch.nn.functional as F

    interval = [p for k, p in model.named_parameters() if interval_lr is not None and "quantizer." in k]
    rest = [p for p in model.parameters() if not any(p is q for q in interval)]
    groups = [dict(params=rest)] + ([dict(params=interval, lr=interval_lr)] if interval else [])
    optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    losses = []
    for i in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        if i == 0 and after_first_backward is not None:
            after_first_backward(model)
        optimizer.step()
        losses.append(loss.item())
    return losses


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight


class Attention(nn.Module):
    """Causal multi-head self-attention from four bias-free nn.Linears (no rotary embedding:
    the quantized layers are what the tests are about)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(dim), Attention(dim, heads)
        self.mlp_norm, self.mlp = RMSNorm(dim), SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TinyLlama(nn.Module):
    """A Llama-shaped language model, small: token embedding, pre-norm blocks of attention and
    a SwiGLU MLP, a final RMSNorm, and an output head tied to the embedding."""

    def __init__(self, vocab: int = 96, dim: int = 64, layers: int = 2, heads: int = 4, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def token_task(batch: int = 8, length: int = 16, vocab: int = 96, generator: torch.Generator | None = None):
    """Random token sequences and their next tokens: a batch a small model can memorise."""
    tokens = torch.randint(0, vocab, (batch, length + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]
