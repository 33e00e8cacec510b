"""backend="auto" on CUDA tensors: the measured table's keys and the choice made from it. Runs
on CPU tensors (the choice reads only shapes, strides and dtypes), with the GPU architecture
stubbed."""

import json

import pytest
import torch

import lsq_fast
from lsq_fast.ops import backend_table


@pytest.mark.parametrize(
    "shape,axis,channels_last,expected",
    [
        ((8, 64, 56, 56), None, False, "tensor/float32/1M-16M"),
        ((4096,), None, False, "tensor/float32/<64K"),
        ((512, 256, 3, 3), 0, False, "weight/float32/1M-16M"),
        ((1000, 300), 0, False, "weight/float32/64K-1M"),
        ((8, 64, 56, 56), 1, False, "channel_runs/float32/1M-16M"),
        ((8, 64, 56, 56), 1, True, "channels_fastest/float32/1M-16M"),
        ((32, 300), -1, False, "channels_fastest/float32/<64K"),
        ((64, 1024, 1024), 1, False, "channel_runs/float32/16M+"),
        ((8, 1, 4, 4), 1, False, "tensor/float32/<64K"),  # one channel is per-tensor
    ],
)
def test_keys(shape, axis, channels_last, expected):
    x = torch.empty(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert backend_table.key(x, axis) == expected
    assert backend_table.key(x.bfloat16(), axis) == expected.replace("float32", "bfloat16")


def test_choice_follows_the_table_for_the_architecture(monkeypatch):
    monkeypatch.setattr(backend_table, "architecture", lambda index: "sm_90")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    table = {"sm_90": {"choices": {"tensor/float32/16M+": "cuda", "weight/float32/64K-1M": "triton"}}}
    big, weight, other = torch.empty(1 << 24), torch.empty(1000, 300), torch.empty(1000)
    assert backend_table.choose(big, None, table) == "cuda"
    assert backend_table.choose(weight, 0, table) == "triton"
    assert backend_table.choose(other, None, table) == backend_table.DEFAULT  # not measured
    assert backend_table.choose(big, None, {"sm_80": table["sm_90"]}) == backend_table.DEFAULT  # other GPU


def test_shipped_table_is_well_formed():
    """Every entry names a fused GPU backend and a key of the form key() produces."""
    raw = json.loads(backend_table.TABLE_PATH.read_text())
    layouts = {"tensor", "weight", "channel_runs", "channels_fastest"}
    sizes = {name for _, name in backend_table.SIZE_CLASSES} | {backend_table.LARGEST_CLASS}
    for arch, entry in raw["architectures"].items():
        assert arch.startswith("sm_")
        for key, backend in entry["choices"].items():
            layout, dtype, size = key.split("/")
            assert layout in layouts and size in sizes and hasattr(torch, dtype), key
            assert backend in ("cuda", "triton"), key


def test_cuda_backend_on_cpu_tensors_is_a_clear_error():
    with pytest.raises(ValueError, match="backend 'cuda' is not available for tensors on cpu"):
        lsq_fast.lsq_quantize(torch.randn(8), torch.tensor([0.1]), 4, backend="cuda")
