"""The integer codes of a converted weight, packed: a b-bit code takes a field of 1, 2, 4 or 8
bits (the smallest power of two that holds b bits), so 8, 4, 2 or 1 codes share a byte; fields
never straddle bytes, so unpacking is one shift and one mask per field, in standard aten ops
(torch.export's portable program runs it as it is).

A code c of the grid [qmin, qmax] is stored as c - qmin (0 .. 2^b - 1), in element order, the
first code of a byte in its lowest bits; the last byte is padded with zeros. 3 bits take a 4-bit
field (8 codes in 4 bytes, not 3): a field that straddles bytes would cost a second load and
shift per code in every dequantization, for 25% less storage at 3 bits only.
"""

from __future__ import annotations

import torch


def field_bits(bits: int) -> int:
    """The width of the field a `bits`-bit code is stored in: 1, 2, 4 or 8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"lsq_fast: codes have 1..8 bits, got {bits!r}")
    return 1 << (bits - 1).bit_length()


def packed_numel(numel: int, bits: int) -> int:
    """The bytes `numel` codes of `bits` bits take."""
    per_byte = 8 // field_bits(bits)
    return -(-numel // per_byte)


def pack_codes(codes: torch.Tensor, bits: int, qmin: int) -> torch.Tensor:
    """The codes (an integer tensor of any shape, each in [qmin, qmin + 2^bits - 1]) packed into
    a 1-D uint8 tensor of packed_numel(codes.numel(), bits) bytes. Codes out of that range are a
    ValueError (one host read: packing is done once, at conversion)."""
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"lsq_fast: codes must be an integer tensor, got {codes.dtype}")
    width = field_bits(bits)
    per_byte = 8 // width
    offsets = codes.reshape(-1).to(torch.int16) - qmin
    if offsets.numel() and not bool(((offsets >= 0) & (offsets < (1 << bits))).all()):
        raise ValueError(f"lsq_fast: codes out of the {bits}-bit grid [{qmin}, {qmin + (1 << bits) - 1}]")
    padded = torch.zeros(packed_numel(offsets.numel(), bits) * per_byte, dtype=torch.int16, device=codes.device)
    padded[: offsets.numel()] = offsets
    fields = padded.reshape(-1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int16, device=codes.device) * width
    return (fields << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, qmin: int, shape) -> torch.Tensor:
    """The codes pack_codes packed, as an int16 tensor of `shape` (standard aten ops only)."""
    width = field_bits(bits)
    per_byte = 8 // width
    numel = 1
    for d in shape:
        numel *= d
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_numel(numel, bits):
        raise ValueError(
            f"lsq_fast: {numel} codes of {bits} bits take {packed_numel(numel, bits)} bytes (a 1-D uint8 tensor), got "
            f"{packed.dtype} of shape {list(packed.shape)}"
        )
    if per_byte == 1:
        fields = packed.to(torch.int16)
    else:
        shifts = torch.arange(per_byte, dtype=torch.uint8, device=packed.device) * width
        fields = ((packed.unsqueeze(1) >> shifts) & ((1 << width) - 1)).reshape(-1)[:numel].to(torch.int16)
    return (fields + qmin).reshape(shape)
