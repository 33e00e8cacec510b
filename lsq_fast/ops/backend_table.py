"""Which fused backend `backend="auto"` runs on a CUDA tensor: a table measured by
benchmarks/pick_backends.py on a GPU and kept in the repository (backend_table.json), keyed by
GPU architecture and then by (layout, dtype, size class). Keys the table lacks (an architecture
nobody measured, or no measurement at all) take DEFAULT.

Layouts: "tensor" (per-tensor), and per channel "weight" (the channel axis leads: a weight on
axis 0), "channel_runs" (NCHW activations on axis 1: runs of H*W elements share a step) and
"channels_fastest" (channels_last activations, the last axis: the step changes every element).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TABLE_PATH = Path(__file__).with_name("backend_table.json")
DEFAULT = "triton"  # where nothing was measured: the backend that was there first
SIZE_CLASSES = ((1 << 16, "<64K"), (1 << 20, "64K-1M"), (1 << 24, "1M-16M"))
LARGEST_CLASS = "16M+"


def size_class(numel: int) -> str:
    for bound, name in SIZE_CLASSES:
        if numel < bound:
            return name
    return LARGEST_CLASS


def layout_class(x: torch.Tensor, channel_axis: int | None) -> str:
    if channel_axis is None or x.shape[channel_axis] == 1:
        return "tensor"
    if x.stride(channel_axis) == 1:
        return "channels_fastest"
    if all(size == 1 for size in x.shape[:channel_axis]) or x.stride(channel_axis) * x.shape[channel_axis] == x.numel():
        return "weight"
    return "channel_runs"


def key(x: torch.Tensor, channel_axis: int | None) -> str:
    return f"{layout_class(x, channel_axis)}/{str(x.dtype).removeprefix('torch.')}/{size_class(x.numel())}"


def load_table(path: Path = TABLE_PATH) -> dict:
    """{architecture: {"choices": {key: backend}, ...measurement details}}."""
    return json.loads(path.read_text())["architectures"] if path.exists() else {}


TABLE = load_table()  # read once, at import: a constant to torch.compile
_ARCHITECTURES: dict[int, str] = {}


# A constant to torch.compile, which calls it while tracing rather than tracing into it.
@torch.compiler.assume_constant_result
def architecture(index: int) -> str:
    """"sm_90" for an H100; asked of the driver once per device."""
    if index not in _ARCHITECTURES:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCHITECTURES[index] = f"sm_{major}{minor}"
    return _ARCHITECTURES[index]


def choose(x: torch.Tensor, channel_axis: int | None, table: dict | None = None) -> str:
    """"cuda" or "triton" for a CUDA tensor x, from the measured table (or `table`, for tests)."""
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    choices = (TABLE if table is None else table).get(architecture(index), {}).get("choices", {})
    return choices.get(key(x, channel_axis), DEFAULT)
