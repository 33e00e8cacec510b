"""lsq_fast.export_onnx: QDQ graphs that onnx.checker passes and onnxruntime runs, compared with
PyTorch's eval outputs of the same model.

Tolerances (docs/export.md says why): onnxruntime's QuantizeLinear divides by the scale and
rounds half to even, as the contract does, so a quantizer alone (LSQ; LSQ+ as Sub/Add) and a
weight's DequantizeLinear (code * s, one rounding) match PyTorch bit for bit. LSQ+ through zero
points and QIL's scale 1/q are one rounding away, measured here. Whole models differ by the
order of the float sums in Conv and MatMul (1e-7 relative), and where such a difference moves
a value across a rounding boundary of the next quantizer, by one grid step of that quantizer in
that element; the model tests bound both.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lsq_fast
from lsq_fast import QuantLinear
from lsq_fast.export.packing import pack_codes
from lsq_fast.ops.args import qrange
from lsq_oracle import grids
from tiny_models import TinyLlama, small_cnn, token_task, toy_task

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from resnet18 import ResNet18  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def run_onnx(path, *inputs) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


def trained(model: nn.Module, *inputs) -> nn.Module:
    model.train()
    model(*inputs)
    return model.eval()


def identity_layer(n: int, act_bits: int, act_signed: bool, method: str = "lsq", step: float = 0.0371,
                   offset: float = 0.0) -> nn.Module:
    """A converted Linear whose weight is exactly the identity: its output is its input quantizer's."""
    layer = QuantLinear(n, n, bias=False, weight_bits=8, act_bits=act_bits, act_signed=act_signed, method=method)
    trained(layer, torch.randn(4, n))
    with torch.no_grad():
        layer.input_quantizer.step.fill_(step)
        if method == "lsq+":
            layer.input_quantizer.offset.fill_(offset)
    converted = lsq_fast.convert(layer)
    converted.qweight.set_values(pack_codes(torch.eye(n, dtype=torch.int16), 8, -128), torch.ones(1))
    return converted


def grid_inputs(rows: int, n: int, step: float, qmin: int, qmax: int, offset: float = 0.0) -> torch.Tensor:
    """Random values over the grid and past its ends, a third of them at half steps (ties) and
    at the clip points."""
    span = (qmax - qmin + 6) * step
    x = torch.rand(rows, n) * span + (qmin - 3) * step + offset
    ties = (torch.randint(2 * qmin - 4, 2 * qmax + 5, (rows, n)).float() * 0.5 * step + offset)
    return torch.where(torch.rand(rows, n) < 1 / 3, ties, x)



@pytest.mark.parametrize("bits,signed", grids())
def test_activation_qdq_is_the_contract_bit_for_bit(seed, tmp_path, bits, signed):
    qmin, qmax = qrange(bits, signed)
    step = float(torch.empty(1).uniform_(0.01, 0.1))
    layer = identity_layer(32, bits, signed, step=step)
    x = grid_inputs(256, 32, step, qmin, qmax)
    lsq_fast.export_onnx(layer, (x,), tmp_path / "q.onnx")
    with torch.no_grad():
        assert torch.equal(run_onnx(tmp_path / "q.onnx", x), layer(x))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("whole", [False, True], ids=["sub-add", "zero-point"])
def test_lsq_plus_offsets(seed, tmp_path, bits, whole):
    """LSQ+: an offset of whole steps becomes the zero point (one rounding away from PyTorch: at
    most one grid step, on few elements); any other offset is Sub and Add (bit for bit)."""
    qmin, qmax = qrange(bits, False)
    step = float(torch.empty(1).uniform_(0.01, 0.1))
    offset = -3 * step if whole else -2.37 * step
    layer = identity_layer(32, bits, False, "lsq+", step, offset)
    x = grid_inputs(256, 32, step, qmin, qmax, offset)
    lsq_fast.export_onnx(layer, (x,), tmp_path / "q.onnx")
    graph = onnx.load(tmp_path / "q.onnx").graph
    ops = [n.op_type for n in graph.node]
    with torch.no_grad():
        expected, got = layer(x), run_onnx(tmp_path / "q.onnx", x)
    if whole:
        # x / s + z and (x - beta) / s round differently only at a tie, by one step
        assert "Sub" not in ops
        steps_off = ((got - expected).abs() / step).round()
        u = (x.double() - offset) / step
        at_tie = ((u - u.floor()) - 0.5).abs() < 1e-4
        print(f"zero point: {int((steps_off > 0).sum())} of {x.numel()} elements one step off, "
              f"{int(at_tie.sum())} at ties")
        assert steps_off.max() <= 1 and bool(((steps_off == 0) | at_tie).all())
    else:
        assert "Sub" in ops and "Add" in ops
        assert torch.equal(got, expected)


WEIGHT_CASES = [("tensor", "lsq"), ("channel", "lsq"), ("group", "lsq"), ("group", "lsq+"), ("group", "lsq+ whole")]


@pytest.mark.parametrize("granularity,method", WEIGHT_CASES)
def test_weights_dequantize_bit_for_bit(seed, tmp_path, granularity, method):
    """The identity as input: the graph's output is the dequantized weight, transposed; bit for
    bit, except LSQ+ offsets of whole steps as zero points: (c - z) * s against c * s + beta,
    one rounding apart. (LSQ+ weights have offsets per group only: elsewhere they are LSQ.)"""
    per = dict(tensor={}, channel=dict(per_channel_weights=True), group=dict(weight_group_size=16))[granularity]
    for bits in range(2, 9):
        layer = QuantLinear(64, 24, bias=False, weight_bits=bits, act_bits=None, method=method.split()[0], **per)
        trained(layer, torch.randn(4, 64))
        if method == "lsq+ whole":
            with torch.no_grad():
                q = layer.weight_quantizer
                q.offset.copy_(-torch.round(-q.offset / q.step).clamp(0, 2**bits - 1) * q.step)
        converted = lsq_fast.convert(layer)
        eye = torch.eye(64)
        lsq_fast.export_onnx(converted, (eye,), tmp_path / "w.onnx")
        graph = onnx.load(tmp_path / "w.onnx").graph
        codes = [i for i in graph.initializer if i.name.endswith("qweight.codes")]
        narrow = onnx.TensorProto.INT4 if method == "lsq" else onnx.TensorProto.UINT4
        assert len(codes) == 1 and (codes[0].data_type == narrow) == (bits <= 4), bits
        zero_points = [n for n in graph.node if n.op_type == "DequantizeLinear" and len(n.input) == 3]
        assert bool(zero_points) == (method == "lsq+ whole")
        with torch.no_grad():
            got, expected = run_onnx(tmp_path / "w.onnx", eye), converted.weight.T
        if method == "lsq+ whole":
            assert (got - expected).abs().max() <= 2**-22 * expected.abs().max(), bits
        else:
            assert torch.equal(got, expected), bits


def test_three_bit_inputs_clip_between_q_and_dq(tmp_path):
    layer = identity_layer(8, 3, False)
    lsq_fast.export_onnx(layer, (torch.randn(2, 8),), tmp_path / "q.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node]
    first = ops.index("QuantizeLinear")
    assert ops[first: first + 3] == ["QuantizeLinear", "Clip", "DequantizeLinear"]


def output_agreement(expected: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(largest difference over the output's range, fraction of the batch's samples off by more than 1e-5 of it).

    Each QDQ pair is the contract bit for bit (the tests above), but onnxruntime sums a convolution
    in another order than PyTorch: where a sum lands within a rounding of a code's tie, one
    activation code moves by a step, and every later layer carries that into all of the sample's
    outputs. So whole models are judged per sample: most agree to ~1e-7 of the range, a flipped one
    by at most a few percent (ResNet-18 w4a4, LSQ_FAST_TEST_SEED=8: one of its 2 images, 3.6e-2).
    """
    scale = expected.abs().max().clamp_min(1e-12)
    off = ((got - expected).abs() / scale).flatten(1)
    return float(off.max()), float((off.amax(dim=1) > 1e-5).float().mean())


@pytest.mark.parametrize("weight_bits,act_bits", [(4, 4), (8, 8), (2, 2)])
def test_small_cnn(seed, tmp_path, weight_bits, act_bits):
    model = small_cnn(batch_norm=True)
    lsq_fast.quantize_model(model, weight_bits=weight_bits, act_bits=act_bits)
    images, _ = toy_task()
    trained(model, images)
    program = lsq_fast.export_onnx(model, (images,), tmp_path / "cnn.onnx")
    with torch.no_grad():
        expected = model(images)
    got = run_onnx(tmp_path / "cnn.onnx", images)
    largest, fraction = output_agreement(expected, got)
    print(f"small CNN w{weight_bits}a{act_bits}: largest difference {largest:.2e} of the range, "
          f"{fraction:.2%} of the samples > 1e-5")
    assert largest < 0.2 and fraction < 0.25  # flips are rare (none in 36 runs): 8 of 32 images would be a defect
    assert torch.allclose(torch.from_numpy(program(images)[0].numpy()), got)  # the ONNXProgram runs it too
    assert isinstance(model[0], lsq_fast.QuantConv2d)  # export converted a copy


@pytest.mark.parametrize("weight_bits,act_bits", [(4, 4), (2, 2)])
def test_resnet18(seed, tmp_path, weight_bits, act_bits):
    model = ResNet18(num_classes=100)
    lsq_fast.quantize_model(model, weight_bits=weight_bits, act_bits=act_bits)  # first and last: 8 bits
    images = torch.randn(2, 3, 64, 64)
    trained(model, images)
    path = tmp_path / "resnet18.onnx"
    lsq_fast.export_onnx(model, (images,), path)
    with torch.no_grad():
        expected = model(images)
    got = run_onnx(path, images)
    largest, fraction = output_agreement(expected, got)
    size = path.stat().st_size
    print(f"ResNet-18 w{weight_bits}a{act_bits}: {size / 1e6:.2f} MB; largest difference {largest:.2e} of the "
          f"range, {fraction:.2%} of the samples > 1e-5")
    assert largest < 0.25  # 2 images: one flipped is half the batch (about 1 seed in 12), so the bound is on the size
    params = sum(p.numel() for p in ResNet18(num_classes=100).parameters())
    assert size < params * 4 * 0.2  # 4-bit (and 2-bit) codes in INT4, two to a byte: an eighth of float32


def test_per_group_transformer_with_a_tied_embedding(seed, tmp_path):
    model = TinyLlama()
    lsq_fast.quantize_model(model, weight_bits=4, act_bits=None, first_last_bits=None, weight_group_size=32,
                            quantize_embeddings=True)
    tokens, _ = token_task()
    trained(model, tokens)
    lsq_fast.export_onnx(model, (tokens,), tmp_path / "llama.onnx")
    graph = onnx.load(tmp_path / "llama.onnx").graph
    blocked = [n for n in graph.node if n.op_type == "DequantizeLinear"
               and any(a.name == "block_size" and a.i == 32 for a in n.attribute)]
    assert len(blocked) == 16  # 14 Linears, the embedding and the head
    codes = [i for i in graph.initializer if i.name.endswith("qweight.codes")]
    assert len(codes) == 15 and all(i.data_type == onnx.TensorProto.INT4 for i in codes)  # one table, shared
    with torch.no_grad():
        expected = model(tokens)
    largest, _ = output_agreement(expected, run_onnx(tmp_path / "llama.onnx", tokens))
    assert largest < 1e-5  # weight-only: no quantizer for a sum's rounding to move


def test_qil_is_within_a_rounding(seed, tmp_path):
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    lsq_fast.quantize_model(model, weight_bits=4, act_bits=4, first_last_bits=None, method="qil")
    x = torch.randn(64, 16).abs()
    trained(model, x)
    lsq_fast.export_onnx(model, (x,), tmp_path / "qil.onnx")
    with torch.no_grad():
        expected = model(x)
    got = run_onnx(tmp_path / "qil.onnx", x)
    largest, fraction = output_agreement(expected, got)
    print(f"QIL w4a4: largest difference {largest:.2e} of the range, {fraction:.2%} of the samples > 1e-5")
    assert largest < 0.1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qil_quantizers_alone(seed, tmp_path, bits):
    """QIL's activation, round(t * q) / q, as QDQ of scale fl(1/q): codes differ only where t * q
    is within a rounding of a tie, by one; values by one rounding. Its weights likewise."""
    n, q = 32, 2**bits - 1
    layer = QuantLinear(n, n, bias=False, weight_bits=bits, act_bits=bits, method="qil")
    trained(layer, torch.rand(4, n))
    with torch.no_grad():
        layer.input_quantizer.center.fill_(0.6)
        layer.input_quantizer.distance.fill_(0.5)
    converted = lsq_fast.convert(layer)
    levels = converted.qweight.levels
    converted.qweight.set_values(pack_codes(torch.eye(n, dtype=torch.int16) * levels, bits, -levels))  # code / q: I
    alpha, beta = 1.0, -0.1  # t = x - 0.1 for c = 0.6, d = 0.5
    t = torch.where(torch.rand(256, n) < 0.5, torch.randint(-2, 2 * q + 3, (256, n)) * 0.5 / q, torch.rand(256, n))
    x = ((t - beta) / alpha).float()
    lsq_fast.export_onnx(converted, (x,), tmp_path / "q.onnx")
    with torch.no_grad():
        expected, got = converted(x), run_onnx(tmp_path / "q.onnx", x)
    steps_off = ((got - expected).abs() * q).round()
    u = (x.double() - 0.1).clamp(0, 1) * q
    at_tie = ((u - u.floor()) - 0.5).abs() < 1e-4
    print(f"QIL {bits}-bit input: {int((steps_off > 0).sum())} of {x.numel()} elements one step off, "
          f"{int(at_tie.sum())} at ties; values within {float(((got - expected).abs() * (steps_off == 0)).max()):.1e}")
    assert steps_off.max() <= 1 and bool(((steps_off == 0) | at_tie).all())
    close = (got - expected).abs() <= 2**-23 * expected.abs()  # one rounding: code * fl(1/q) against code / q
    assert bool((close | (steps_off > 0)).all())


def test_opsets(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    lsq_fast.quantize_model(model, weight_bits=4, act_bits=8, first_last_bits=None)
    x = torch.randn(3, 8)
    trained(model, x)
    with pytest.raises(ValueError, match=r"layer '0' has 4-bit weights as INT4, which needs ONNX opset 21"):
        lsq_fast.export_onnx(model, (x,), tmp_path / "m.onnx", opset=20)
    with pytest.raises(ValueError, match="opset must be an int in 18..23"):
        lsq_fast.export_onnx(model, (x,), tmp_path / "m.onnx", opset=13)
    eight = nn.Sequential(nn.Linear(8, 8))
    lsq_fast.quantize_model(eight, weight_bits=8, act_bits=8)
    trained(eight, x)
    for opset in (18, 23):
        lsq_fast.export_onnx(eight, (x,), tmp_path / "m.onnx", opset=opset)
        assert onnx.load(tmp_path / "m.onnx").opset_import[0].version == opset
        with torch.no_grad():
            assert output_agreement(eight(x), run_onnx(tmp_path / "m.onnx", x))[0] < 1e-6  # Gemm's sum order
    grouped = nn.Sequential(nn.Linear(64, 8))
    lsq_fast.quantize_model(grouped, weight_bits=8, act_bits=None, weight_group_size=32)
    trained(grouped, torch.randn(3, 64))
    with pytest.raises(ValueError, match="in groups of 32 .block_size., which needs ONNX opset 21"):
        lsq_fast.export_onnx(grouped, (torch.randn(3, 64),), tmp_path / "m.onnx", opset=20)


def test_bad_input(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="no quantized or converted layer"):
        lsq_fast.export_onnx(model, (x,), tmp_path / "m.onnx")
    lsq_fast.quantize_model(model)
    with pytest.raises(ValueError, match="has not been initialised"):
        lsq_fast.export_onnx(model, (x,), tmp_path / "m.onnx")
    trained(model, x)
    with pytest.raises(TypeError, match="example_inputs must be a tuple"):
        lsq_fast.export_onnx(model, x, tmp_path / "m.onnx")
