"""LSQ on CIFAR-10: the digits example's recipe (examples/qat_recipe.py) on a ResNet-20, for users
who have the data and a GPU.

1. Train ResNet-20 (He et al., 2016: three stages of three basic blocks, 16/32/64 channels,
   parameter-free shortcuts) in float: SGD momentum 0.9, LR 0.1, weight decay 1e-4, cosine
   decay, random crop (4 pixels of zero padding) and horizontal flip.
2. For 4, 3 and 2 bits (weights and activations; first and last layer at 8): calibrate the
   steps only (post-training), and fine-tune from the float weights with learned steps (LR 0.01,
   cosine decay, weight decay 1e-4 / 0.5e-4 / 0.25e-4, none on the steps).
3. Print the table (accuracy, seconds per epoch with lsq_fast and the reference quantizer) and
   plot accuracy against bits.

    python examples/qat_cifar10.py --data ~/data --download     # torchvision fetches the data once
    python examples/qat_cifar10.py --data ~/data --float-checkpoint resnet20.pt   # reuse the float model

Data: the python version of CIFAR-10 (cifar-10-batches-py) under --data, read with pickle;
with --download, torchvision.datasets.CIFAR10 fetches and unpacks it first. The augmentation
runs on the device, batched, in plain PyTorch.

What to expect (not run here: CI has neither the data nor a GPU). He et al. report 91.25% for
the float ResNet-20 (8.75% error) with a step schedule; a cosine schedule gives about the same.
Published learned-range quantizers on this network and recipe (PACT, Choi et al., 2018; APoT,
Li et al., ICLR 2020) stay within about half a point of float at 4 bits and about a point at 3,
and lose 1 to 2 points at 2 bits; calibration alone loses far more at 2 bits. On one modern GPU
the float run takes minutes per ten epochs; the test (tests/test_examples.py) runs this file's
model and data code on a few random images.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import qat_recipe  # examples/: the shared recipe, table and plot
from qat_recipe import WEIGHT_DECAY

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's training set, per channel
STD = (0.2470, 0.2435, 0.2616)


# --- data


def load_cifar10(root: Path, download: bool = False):
    """(train images, train labels, test images, test labels): uint8 [N, 3, 32, 32] and int64 [N]."""
    folder = Path(root) / "cifar-10-batches-py"
    if not folder.is_dir():
        if not download:
            raise SystemExit(f"no CIFAR-10 at {folder}: pass --download (torchvision fetches it) or unpack "
                             f"cifar-10-python.tar.gz under {root}")
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)  # fetches and unpacks cifar-10-python.tar.gz

    def read(names: list[str]):
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(torch.as_tensor(batch[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
            labels.append(torch.as_tensor(batch[b"labels"], dtype=torch.int64))
        return torch.cat(images), torch.cat(labels)

    return (*read([f"data_batch_{i}" for i in range(1, 6)]), *read(["test_batch"]))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32, per-channel standardised."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation on a uint8 batch: zero-pad by 4, crop a random 32x32
    window, flip half of the images horizontally; returns them normalised."""
    n, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 9, (n,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(3, device=images.device)[None, :, None, None]
    crops = padded[batch, channel, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return normalize(torch.where(flip[:, None, None, None], crops.flip(3), crops))


def training_batches(images, labels, size: int, generator: torch.Generator):
    """One epoch of augmented batches, on the images' device."""
    for xb, yb in qat_recipe.shuffled(images, labels, size, generator):
        yield augment(xb, generator), yb


# --- model


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; the shortcut subsamples and zero-pads channels where the
    shape changes (He et al.'s option A: no parameters, so nothing there to quantize)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, classes: int = 10, blocks: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --- the run


def run(args) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    x, y, x_test, y_test = (t.to(device) for t in load_cifar10(args.data, args.download))
    test = (normalize(x_test), y_test)
    generator = torch.Generator().manual_seed(args.seed)
    batches = lambda: training_batches(x, y, args.batch, generator)  # noqa: E731
    steps = qat_recipe.steps(len(x), args.batch)

    float_model = ResNet20().to(device)
    checkpoint = Path(args.float_checkpoint) if args.float_checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        float_model.load_state_dict(torch.load(checkpoint, map_location=device))
        print(f"float model: {checkpoint}")
    else:
        seconds = qat_recipe.train(float_model, batches, epochs=args.float_epochs, steps_per_epoch=steps, lr=0.1,
                                   weight_decay=1e-4)
        print(f"float: {args.float_epochs} epochs, {seconds:.1f} s/epoch")
        if checkpoint is not None:
            torch.save(float_model.state_dict(), checkpoint)
    calibration = [normalize(x[i:i + args.batch]) for i in range(0, min(len(x), 4 * args.batch), args.batch)]
    return qat_recipe.compare_bits(float_model, args.bits, batches=batches, steps_per_epoch=steps, test=test,
                                   calibration=calibration, qat_epochs=args.qat_epochs,
                                   reference_epochs=args.reference_epochs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder holding (or to hold) cifar-10-batches-py")
    p.add_argument("--download", action="store_true", help="fetch the data with torchvision if it is not there")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2], choices=sorted(WEIGHT_DECAY))
    p.add_argument("--float-epochs", type=int, default=160)
    p.add_argument("--qat-epochs", type=int, default=60)
    p.add_argument("--reference-epochs", type=int, default=1,
                   help="epochs timed with the reference quantizer per bit width (0: none)")
    p.add_argument("--float-checkpoint", help="load the float model from here if it exists, else train and save it")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="qat_cifar10.png", help="accuracy against bits ('' for none)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    return qat_recipe.main(parse_args(argv), run, "CIFAR-10, ResNet-20")


if __name__ == "__main__":
    main()
