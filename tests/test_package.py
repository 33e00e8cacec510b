"""The package's shape: the method registry agrees with the compiled ops, the reference imports
nothing from the fused path, the 0.1 module paths still import, and QuantConfig is checked once
and carried by the layers."""

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

import lsq_fast
from lsq_fast import QuantConfig, QuantConv2d, QuantLinear, reference
from lsq_fast._compat import OLD_PATHS
from lsq_fast.ops.registry import METHODS, quantizer_ops

PACKAGE = Path(lsq_fast.__file__).parent


@pytest.mark.parametrize("name", list(METHODS))
def test_registry_matches_the_ops(name):
    """Each method's forward takes x then its learned tensors, its backward grad_y and the same
    arguments and returns one gradient per tensor; its references exist."""
    m = METHODS[name]
    forward, backward = quantizer_ops(name, "cpu")
    fwd_args = [a.name for a in forward.default._schema.arguments]
    bwd_args = [a.name for a in backward.default._schema.arguments]
    assert fwd_args[: 1 + len(m.params)] == ["x", *m.params]
    assert bwd_args[0] == "grad_y" and bwd_args[1:] == fwd_args
    assert len(backward.default._schema.returns) == 1 + len(m.params)
    for optional in m.optional:
        assert str(forward.default._schema.arguments[fwd_args.index(optional)].type) == "Optional[Tensor]"
    assert all(callable(getattr(reference, f)) for f in m.reference)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lsq_fast::{m.forward}", "Autograd")


@pytest.mark.parametrize("name", list(METHODS))
def test_triton_twins_have_the_cpu_schemas(name):
    pytest.importorskip("triton")
    if not lsq_fast.ops.backends.triton_interpreting() and not torch.cuda.is_available():
        pytest.skip("the Triton ops need a GPU or TRITON_INTERPRET=1")
    for cpu_op, triton_op in zip(quantizer_ops(name, "cpu"), quantizer_ops(name, "triton")):
        cpu_schema, triton_schema = str(cpu_op.default._schema), str(triton_op.default._schema)
        # torch infers an int of a Python signature as SymInt
        assert triton_schema.replace("_triton(", "(", 1).replace("SymInt", "int") == cpu_schema


def _lsq_fast_imports(path: Path) -> set[str]:
    """The lsq_fast modules a file imports, as absolute names."""
    package = "lsq_fast." + ".".join(path.relative_to(PACKAGE).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rstrip(".").rsplit(".", node.level - 1)[0] if node.level > 1 else package.rstrip(".")
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module and node.module.startswith("lsq_fast"):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("lsq_fast"))
    return names


def test_reference_imports_only_the_argument_rules():
    """The oracle shares the argument checks with the fused path (same messages) and nothing else."""
    for path in (PACKAGE / "reference").glob("*.py"):
        outside = {n for n in _lsq_fast_imports(path) if not n.startswith("lsq_fast.reference")}
        assert outside <= {"lsq_fast.ops.args"}, (path.name, outside)


def test_ops_import_nothing_from_the_modules():
    for path in (PACKAGE / "ops").glob("*.py"):
        assert not {n for n in _lsq_fast_imports(path) if n.startswith(("lsq_fast.nn", "lsq_fast.prepare"))}, path


@pytest.mark.parametrize("old,new", list(OLD_PATHS.items()))
def test_old_module_paths_are_aliases(old, new):
    assert importlib.import_module(f"lsq_fast.{old}") is importlib.import_module(f"lsq_fast.{new}")


def test_old_names_still_import():
    from lsq_fast.layers import QuantConv2d as OldConv
    from lsq_fast.prepare import quantize_model
    from lsq_fast.quantizer import LearnedQuantizer, LSQQuantizer

    assert quantize_model is lsq_fast.quantize_model and OldConv is QuantConv2d
    assert lsq_fast.convert is lsq_fast.export.convert.convert  # the convert step, no longer quantize_model's module
    assert LSQQuantizer is lsq_fast.LSQQuantizer and issubclass(LSQQuantizer, LearnedQuantizer)
    assert lsq_fast.backends.lsq_ops("cpu") == quantizer_ops("lsq", "cpu")
    assert lsq_fast.lsq.lsq_quantize is lsq_fast.lsq_quantize


def test_config_is_frozen_and_checked_once():
    config = QuantConfig(weight_bits=3, act_bits=None, per_channel_weights=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.weight_bits = 2
    with pytest.raises(ValueError, match="bits must be in 2..8"):
        QuantConfig(weight_bits=9)
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        QuantConfig(act_bits=0)
    with pytest.raises(ValueError, match="unknown backend"):
        QuantConfig(backend="tpu")
    with pytest.raises(TypeError, match="unknown quantization option 'weight_bit'"):
        QuantLinear(4, 2, weight_bit=3)
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        QuantLinear(4, 2, config={"weight_bits": 3})


def test_layers_carry_the_config():
    config = QuantConfig(weight_bits=3, act_bits=5, per_channel_weights=True, method="lsq+")
    layer = QuantConv2d(3, 4, 3, config=config)
    assert layer.config == config and layer.method == "lsq+"
    assert layer.weight_quantizer.bits == 3 and layer.weight_quantizer.step.shape == (4,)
    assert type(layer.input_quantizer).__name__ == "LSQPlusQuantizer" and layer.input_quantizer.bits == 5
    # keywords replace the config's fields; from_float takes both too
    assert QuantLinear(4, 2, config=config, weight_bits=2).config == dataclasses.replace(config, weight_bits=2)
    linear = QuantLinear.from_float(nn.Linear(4, 2), config, act_bits=None)
    assert linear.input_quantizer is None and linear.config.weight_bits == 3
    assert QuantLinear(4, 2, weight_bits=2).config == QuantConfig(weight_bits=2)


def test_quantize_model_builds_one_config_for_the_inner_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    lsq_fast.quantize_model(model, weight_bits=2, act_bits=3, round_grad="arctan", k=2.0)
    inner, edge = model[2].config, model[0].config
    assert inner == QuantConfig(weight_bits=2, act_bits=3, round_grad="arctan", k=2.0)
    assert edge == dataclasses.replace(inner, weight_bits=8, act_bits=8) == model[3].config
