"""The modules: quantizers, the layers that hold them, and what they need around them.

    quantizer.py            LearnedQuantizer: what every quantizer module shares
    lsq_quantizer.py        LSQQuantizer (LSQ, LG-LSQ's soft round, LSQ+'s weight init)
    lsq_plus_quantizer.py   LSQPlusQuantizer (a learned step and offset)
    qil_quantizer.py        QILQuantizer (a learned interval)
    config.py               QuantConfig, and the table of what each method puts on a layer
    layers.py               QuantConv2d, QuantLinear, QuantEmbedding
    positive.py             the optimizer post-step clamp that keeps steps positive
    distributed.py          the data-parallel world, the all-reduces of the initial statistics, sharded writes
    fsdp.py                 fully_shard_quantizers: the quantizers under FSDP2; load_full_state_dict
"""

from .config import QuantConfig
from .fsdp import fully_shard_quantizers, load_full_state_dict
from .layers import QuantConv2d, QuantEmbedding, QuantLinear
from .lsq_plus_quantizer import LSQPlusQuantizer
from .lsq_quantizer import LSQQuantizer
from .qil_quantizer import QILQuantizer
from .quantizer import LearnedQuantizer

__all__ = ["QuantConfig", "QuantConv2d", "QuantLinear", "QuantEmbedding", "LSQQuantizer", "LSQPlusQuantizer", "QILQuantizer",
           "LearnedQuantizer", "fully_shard_quantizers", "load_full_state_dict"]
