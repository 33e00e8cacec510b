"""Bad input is a clear error that names the problem, from the public API and from the raw ops."""

import pytest
import torch

import lsq_fast
from lsq_fast import reference

QUANTIZERS = [lsq_fast.lsq_quantize, reference.lsq_quantize]


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=["lsq_fast", "reference"])
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(bits=0), ValueError, "bits must be in 2..8 for signed"),
        (dict(bits=1), ValueError, "bits must be in 2..8 for signed"),
        (dict(bits=9), ValueError, "bits must be in 2..8"),
        (dict(bits=0, signed=False), ValueError, "bits must be in 1..8 for unsigned"),
        (dict(bits=4.0), TypeError, "bits must be an int"),
        (dict(bits=True), TypeError, "bits must be an int"),
        (dict(channel_axis=2), ValueError, "channel_axis 2 is out of range"),
        (dict(channel_axis=-3), ValueError, "channel_axis -3 is out of range"),
        (dict(channel_axis=1), ValueError, r"per-channel step must have x.shape\[1\] = 5 elements, got 1"),
        (dict(grad_scale=float("nan")), ValueError, "grad_scale must be finite"),
        (dict(grad_scale=torch.tensor(1.0)), TypeError, "grad_scale must be a Python float"),
    ],
)
def test_bad_arguments(quantize, kwargs, error, match):
    args = dict(bits=4)
    args.update(kwargs)
    bits = args.pop("bits")
    with pytest.raises(error, match=match):
        quantize(torch.randn(3, 5), torch.tensor([0.1]), bits, **args)


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=["lsq_fast", "reference"])
def test_bad_tensors(quantize):
    x = torch.randn(3, 5)
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64, got torch.int32"):
        quantize(x.to(torch.int32), torch.tensor([0.1]), 4)
    with pytest.raises(TypeError, match="step must be float32"):
        quantize(x, torch.tensor([0.1], dtype=torch.float16), 4)
    with pytest.raises(TypeError, match="step must be float32"):
        quantize(x, torch.tensor([0.1], dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="per-tensor quantization needs a step with one element, got 3"):
        quantize(x, torch.tensor([0.1, 0.2, 0.3]), 4)
    with pytest.raises(ValueError, match="channel_axis 0 is out of range for x with 0 dimensions"):
        quantize(torch.tensor(1.0), torch.tensor([0.1]), 4, channel_axis=0)
    with pytest.raises(ValueError, match="same device"):
        quantize(x, torch.tensor([0.1], device="meta"), 4)


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=["lsq_fast", "reference"])
@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_step_values_on_cpu(quantize, bad):
    with pytest.raises(ValueError, match="step must be positive and finite"):
        quantize(torch.randn(4, 3), torch.tensor([0.1, bad, 0.2]), 4, channel_axis=1)


def test_backend_selection():
    x, step = torch.randn(4), torch.tensor([0.1])
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        lsq_fast.lsq_quantize(x, step, 4, backend="fast")
    with pytest.raises(ValueError, match="backend 'cuda' is not available for tensors on cpu"):
        lsq_fast.lsq_quantize(x, step, 4, backend="cuda")
    if lsq_fast.ops.backends.triton_interpreting():
        assert lsq_fast.available_backends("cpu") == ("cpu", "triton", "reference")
    else:
        with pytest.raises(ValueError, match="backend 'triton' is not available"):
            lsq_fast.lsq_quantize(x, step, 4, backend="triton")
        assert lsq_fast.available_backends("cpu") == ("cpu", "reference")
    assert torch.equal(lsq_fast.lsq_quantize(x, step, 4, backend="reference"), lsq_fast.lsq_quantize(x, step, 4, backend="cpu"))


def test_raw_ops_check_their_arguments(impl):
    forward, backward = lsq_fast.ops.registry.lsq_ops(impl.backend)
    x, step = impl.put(torch.randn(3, 5)), impl.put(torch.tensor([0.1]))
    with pytest.raises(ValueError, match="need qmin < qmax"):
        forward(x, step, 7, -8, None)
    with pytest.raises(ValueError, match="channel_axis 5 is out of range"):
        forward(x, step, -8, 7, 5)
    with pytest.raises(ValueError, match=r"per-channel step must have x.shape\[1\] = 5 elements, got 1"):
        forward(x, step, -8, 7, 1)
    if impl.device == "cpu":
        with pytest.raises(ValueError, match=r"step must be positive and finite, got \[?-1"):
            forward(x, impl.put(torch.tensor([-1.0])), -8, 7, None)
    with pytest.raises(ValueError, match="grad_y has shape"):
        backward(impl.put(torch.randn(5, 3)), x, step, -8, 7, None, None)
    with pytest.raises(TypeError, match=r"grad_y is (BFloat16|torch.bfloat16) but x is (Float|torch.float32)"):
        backward(impl.put(torch.randn(3, 5, dtype=torch.bfloat16)), x, step, -8, 7, None, None)
    with pytest.raises(TypeError, match="x must be float32"):
        forward(x.to(torch.int64), step, -8, 7, None)
