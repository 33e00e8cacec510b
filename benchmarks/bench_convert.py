"""What lsq_fast.convert saves: the checkpoint (torch.save of the state_dict) of a float model,
of the same model quantized (fake quantization keeps the float weights and adds the steps), and
converted (integer codes and float32 steps), and the ONNX file export_onnx writes; with a check
that the converted model's eval output is the quantized one's, bit for bit.

    python benchmarks/bench_convert.py [--out benchmarks/results/convert-sizes.md]

Models: ResNet-18 (1000 classes; 4-bit, the first and last layers 8-bit, as the LSQ paper) and
the Llama-shaped transformer of bench_qat.py --model llama at its CPU sizes (weight-only 4-bit,
groups of 128, the tied embedding quantized once). Sizes are exact; nothing here is timed.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import tempfile
from pathlib import Path

import torch

import lsq_fast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_qat import GROUP_SIZE, LLAMA_SIZES  # noqa: E402
from llama import Llama, token_task  # noqa: E402
from resnet18 import ResNet18  # noqa: E402


def checkpoint_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def resnet18():
    model = ResNet18()
    images = torch.randn(2, 3, 64, 64)
    return model, dict(weight_bits=4, act_bits=4), (images,), "ResNet-18, 4-bit (first and last 8-bit)"


def llama():
    model = Llama(**LLAMA_SIZES["cpu"])
    tokens, _ = token_task(batch=2, length=32, vocab=LLAMA_SIZES["cpu"]["vocab"])
    options = dict(weight_bits=4, act_bits=None, first_last_bits=None, weight_group_size=GROUP_SIZE,
                   quantize_embeddings=True)
    return model, options, (tokens,), f"Llama-shaped {LLAMA_SIZES['cpu']}, weight-only 4-bit g{GROUP_SIZE}"


def measure(make) -> dict:
    torch.manual_seed(0)
    model, options, inputs, title = make()
    row = dict(model=title, float=checkpoint_bytes(model))
    lsq_fast.quantize_model(model, **options)
    model.train()
    model(*inputs)  # initialises the quantizers
    model.eval()
    row["quantized"] = checkpoint_bytes(model)
    with torch.no_grad():
        expected = model(*inputs)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            lsq_fast.export_onnx(model, inputs, path)
            row["onnx"] = os.path.getsize(path)
    except ImportError:
        row["onnx"] = None
    converted = lsq_fast.convert(copy.deepcopy(model))
    row["converted"] = checkpoint_bytes(converted)
    with torch.no_grad():
        row["bit_exact"] = torch.equal(converted(*inputs), expected)
    return row


def table(rows: list[dict]) -> str:
    def mb(n):
        return "-" if n is None else f"{n / 1e6:.2f} MB"

    lines = ["| model | float | quantized (fake quant) | converted | converted / float | ONNX file | "
             "converted output = quantized |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {mb(r['float'])} | {mb(r['quantized'])} | {mb(r['converted'])} | "
                     f"{r['converted'] / r['float']:.1%} | {mb(r['onnx'])} | "
                     f"{'bit for bit' if r['bit_exact'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the table (markdown) here")
    args = p.parse_args()
    rows = [measure(resnet18), measure(llama)]
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
