"""torch.export of a quantized model (eval mode: the fused ops trace through their fake kernels)
and of a converted one (standard aten ops only: the portable program); both run and match."""

import sys
from pathlib import Path

import pytest
import torch

import lsq_fast
from tiny_models import TinyLlama, small_cnn, token_task, toy_task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from resnet18 import ResNet18  # noqa: E402


def cnn():
    model = small_cnn(batch_norm=True)
    lsq_fast.quantize_model(model, weight_bits=4, act_bits=4)
    images, _ = toy_task()
    return model, (images,)


def resnet18():
    model = ResNet18(num_classes=100)
    lsq_fast.quantize_model(model, weight_bits=4, act_bits=4)
    return model, (torch.randn(2, 3, 64, 64),)


def llama():
    model = TinyLlama()
    lsq_fast.quantize_model(model, weight_bits=4, act_bits=None, first_last_bits=None, weight_group_size=32,
                            quantize_embeddings=True, method="lsq+")
    tokens, _ = token_task()
    return model, (tokens,)


def namespaces(program: torch.export.ExportedProgram) -> set[str]:
    return {n.target.namespace for n in program.graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}


@pytest.mark.parametrize("make", [cnn, resnet18, llama])
def test_quantized_and_converted_programs_run_and_match(seed, make):
    model, inputs = make()
    model.train()
    model(*inputs)
    model.eval()
    with torch.no_grad():
        expected = model(*inputs)
    quantized = torch.export.export(model, inputs)
    assert "lsq_fast" in namespaces(quantized)  # needs lsq_fast's kernels wherever it runs
    converted_model = lsq_fast.convert(model)
    converted = torch.export.export(converted_model, inputs)
    assert namespaces(converted) == {"aten"}  # the portable one
    with torch.no_grad():
        assert torch.equal(quantized.module()(*inputs), expected)
        assert torch.equal(converted.module()(*inputs), expected)
    # the program keeps the codes, not a float weight
    assert not any(t.is_floating_point() and t.numel() >= 32 * 64
                   for name, t in converted.state_dict.items() if "qweight" in name)
