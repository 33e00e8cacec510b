"""The quantizers in plain PyTorch, written as their papers write them: the oracle of every test
and the baseline of every benchmark (docs/contract.md is the contract).

    lsq_quantize                  LSQ (section 1), with LG-LSQ's soft-round gradient as an option (section 4)
    lsq_plus_quantize             LSQ+ (section 2): a learned offset
    qil_quantize_weight/activation QIL (section 3): a learned interval (and exponent, for weights);
                                  qil_transform_* its transformer alone (before the round)
"""

from .lsq import gradscale, lsq_quantize, roundpass
from .lsq_plus import lsq_plus_quantize
from .qil import qil_quantize_activation, qil_quantize_weight, qil_transform_activation, qil_transform_weight
from .soft_round import arctan_roundpass, soft_round_slope

__all__ = [
    "lsq_quantize",
    "lsq_plus_quantize",
    "qil_quantize_weight",
    "qil_quantize_activation",
    "qil_transform_weight",
    "qil_transform_activation",
    "gradscale",
    "roundpass",
    "arctan_roundpass",
    "soft_round_slope",
]
