"""lsq_fast.export.packing: codes of every width packed and unpacked, odd counts included."""

import pytest
import torch

from lsq_fast.export.packing import field_bits, pack_codes, packed_numel, unpack_codes
from lsq_fast.ops.args import qrange
from lsq_oracle import grids



@pytest.mark.parametrize("bits,signed", grids())
@pytest.mark.parametrize("numel", [0, 1, 2, 3, 7, 9, 1001])
def test_round_trip_every_width(seed, bits, signed, numel):
    qmin, qmax = qrange(bits, signed)
    codes = torch.randint(qmin, qmax + 1, (numel,), dtype=torch.int16)
    if numel >= 2:  # both ends of the grid
        codes[0], codes[-1] = qmin, qmax
    packed = pack_codes(codes, bits, qmin)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_numel(numel, bits)
    assert packed.numel() == -(-numel * field_bits(bits) // 8)
    assert torch.equal(unpack_codes(packed, bits, qmin, (numel,)), codes)


def test_fields_and_layout():
    assert [field_bits(b) for b in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    # 4-bit signed: c - qmin in each nibble, the first code in the low nibble
    packed = pack_codes(torch.tensor([-8, 7, 0]), 4, -8)
    assert packed.tolist() == [0 | (15 << 4), 8]
    # 2-bit unsigned: four to a byte
    assert pack_codes(torch.tensor([1, 2, 3, 0, 1]), 2, 0).tolist() == [1 | 2 << 2 | 3 << 4, 1]


def test_shapes_come_back():
    codes = torch.randint(-4, 4, (3, 5, 7), dtype=torch.int16)
    assert torch.equal(unpack_codes(pack_codes(codes, 3, -4), 3, -4, codes.shape), codes)


def test_bad_codes_and_bytes():
    with pytest.raises(ValueError, match=r"out of the 4-bit grid \[-8, 7\]"):
        pack_codes(torch.tensor([8]), 4, -8)
    with pytest.raises(TypeError, match="integer tensor"):
        pack_codes(torch.tensor([1.0]), 4, -8)
    with pytest.raises(ValueError, match="1..8 bits"):
        field_bits(9)
    with pytest.raises(ValueError, match="take 2 bytes"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, -8, (4,))
