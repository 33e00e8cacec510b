"""What only a GPU can show of the GPU backends (Triton and the CUDA C++ kernels): CUDA-graph
capture, torch.compile with "reduce-overhead", launch counts, and tensors past 2^31 elements.
Every test skips without CUDA; the contract itself runs on CUDA tensors through the `impl`
fixture of the other test files."""

import pytest
import torch

import lsq_fast
from lsq_fast import reference
from lsq_oracle import assert_same_bits, assert_step_grad_close, expected_grad_x, make_step, make_x, step_grad_terms

pytestmark = pytest.mark.gpu


@pytest.fixture(params=["triton", "cuda"])
def backend(request):
    """A GPU backend that this process has: "triton" needs Triton, "cuda" a CUDA build of lsq_fast."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if request.param not in lsq_fast.available_backends("cuda"):
        pytest.skip(f"backend {request.param!r} is not available (Triton missing, or lsq_fast built without CUDA)")
    return request.param


@pytest.fixture
def cuda(backend):
    return torch.device("cuda")


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_cuda_graph_capture_and_replay(cuda, backend, seed, axis):
    """No host sync and no allocation outside the graph's pool: forward and backward replay
    with new inputs copied into the captured buffers."""
    forward, backward = lsq_fast.ops.registry.lsq_ops(backend)
    shape = (8, 16, 12, 12)
    channels = 1 if axis is None else shape[axis]
    step = make_step(channels).to(cuda)
    x, grad_y = torch.empty(shape, device=cuda), torch.empty(shape, device=cuda)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compilation) off the capture
        forward(x.normal_(), step, -8, 7, axis, None)
        backward(grad_y.normal_(), x, step, -8, 7, axis, None)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = forward(x, step, -8, 7, axis, None)
        grad_x, grad_step = backward(grad_y, x, step, -8, 7, axis, None)
    for _ in range(3):
        x_new = make_x(shape, step.cpu(), 4, True, axis)
        g_new = torch.randn(shape)
        x.copy_(x_new)
        grad_y.copy_(g_new)
        graph.replay()
        torch.cuda.synchronize()
        assert_same_bits(y.cpu(), reference.lsq_quantize(x_new, step.cpu(), 4, channel_axis=axis))
        assert torch.equal(grad_x.cpu(), expected_grad_x(x_new, step.cpu(), g_new, 4, True, axis))
        assert_step_grad_close(grad_step.cpu(), x_new, step.cpu(), g_new, 4, True, axis)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compile_reduce_overhead_training_step(cuda, backend, seed, dtype):
    """torch.compile(fullgraph=True, mode="reduce-overhead") traces into the Triton kernels
    (triton_op), or calls the CUDA ops, and replays them in CUDA graphs; results equal eager,
    step after step."""
    step0 = make_step(32).to(cuda)

    def train_step(x, w, step_x, step_w):
        xq = lsq_fast.lsq_quantize(x, step_x, 4, signed=False, backend=backend)
        wq = lsq_fast.lsq_quantize(w, step_w, 4, channel_axis=0, backend=backend)
        return torch.nn.functional.conv2d(xq, wq, padding=1).square().mean()

    compiled = torch.compile(train_step, fullgraph=True, mode="reduce-overhead")
    w0 = torch.randn(32, 16, 3, 3, device=cuda, dtype=dtype) * 0.1
    for i in range(4):
        x0 = torch.randn(4, 16, 10, 10, device=cuda, dtype=dtype).relu()
        results = []
        for fn in (compiled, train_step):
            x = x0.clone().requires_grad_()
            w = w0.clone().requires_grad_()
            sx = torch.tensor([0.2], device=cuda, requires_grad=True)
            sw = step0.clone().requires_grad_()
            loss = fn(x, w, sx, sw)
            loss.backward()
            results.append([loss.detach().clone(), x.grad, w.grad, sx.grad, sw.grad])
        # Compiled, the loss's backward may round differently: by an ulp in float32, by a bfloat16
        # ulp (2^-8) in bfloat16, and conv's backward sums such values (an element can cancel: an
        # absolute margin on the tensor's scale).
        rel = 1e-5 if dtype == torch.float32 else 2.0**-7
        for got, want in zip(results[0][:3], results[1][:3]):  # the loss, grad_x, grad_w
            torch.testing.assert_close(got, want, rtol=1e-4 if dtype == torch.float32 else 2e-2,
                                       atol=rel * float(want.abs().max()) + 1e-6)
        # The steps' gradients are sums that cancel: both runs within a bound relative to the sum of
        # |terms| (eager's terms, from the gradients reaching the quantizers): the contract's 1e-5 in
        # float32, where the upstream ulp is far below it; the bfloat16 ulp in bfloat16.
        x = x0.detach()
        xq = lsq_fast.lsq_quantize(x, torch.tensor([0.2], device=cuda), 4, signed=False, backend=backend)
        wq = lsq_fast.lsq_quantize(w0, step0, 4, channel_axis=0, backend=backend)
        xq.requires_grad_(), wq.requires_grad_()
        gxq, gwq = torch.autograd.grad(torch.nn.functional.conv2d(xq, wq, padding=1).square().mean(), (xq, wq))
        for run in results:
            assert_step_grad_close(run[3], x.cpu(), torch.tensor([0.2]), gxq.cpu(), 4, False, None, rel=rel)
            assert_step_grad_close(run[4], w0.cpu(), step0.cpu(), gwq.cpu(), 4, True, 0, rel=rel)


@pytest.mark.parametrize("shape,axis", [((64, 64, 3, 3), 0), ((64, 3, 7, 7), 0), ((1, 4096), None)])
def test_small_tensors_launch_one_kernel_each_way(cuda, backend, shape, axis):
    """A layer-sized quantizer is one launch forward and one backward: the step gradient is
    finished inside the backward kernel when each channel's sum fits one program (block)."""
    from torch.profiler import ProfilerActivity, profile

    forward, backward = lsq_fast.ops.registry.lsq_ops(backend)
    step = make_step(1 if axis is None else shape[axis]).to(cuda)
    x = torch.randn(shape, device=cuda)
    for _ in range(2):  # compile first
        backward(x, x, step, -8, 7, axis, None), forward(x, step, -8, 7, axis, None)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward(x, step, -8, 7, axis, None)
        backward(x, x, step, -8, 7, axis, None)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len([k for k in kernels if "lsq" in k or "partials" in k]) == 2, kernels


def test_past_two_to_the_31_elements(cuda, backend):
    """64-bit offsets: a bfloat16 tensor of 2^31 + 1000 elements, checked at both ends and in
    its step gradient (the oracle summed in float64, chunk by chunk)."""
    n = 2**31 + 1000
    need = 4 * n * 2 + (1 << 30)  # x, y/grad_y, grad_x in bfloat16, and room for the oracle's chunks
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    step = torch.tensor([2.0**-4], device=cuda)
    x = (torch.rand(n, device=cuda, dtype=torch.bfloat16) - 0.5) * 2
    grad_y = torch.ones_like(x)
    y = lsq_fast.lsq_quantize(x, step, 4, backend=backend)
    for part in (slice(0, 4096), slice(n - 4096, n)):
        assert_same_bits(y[part].cpu(), reference.lsq_quantize(x[part].cpu(), step.cpu(), 4))
    del y
    _, backward = lsq_fast.ops.registry.lsq_ops(backend)
    grad_x, grad_step = backward(grad_y, x, step, -8, 7, None, 1.0)
    assert torch.equal(grad_x[-4096:].cpu(), expected_grad_x(x[-4096:].cpu(), step.cpu(), grad_y[-4096:].cpu(), 4, True, None))
    exact, magnitude = 0.0, 0.0
    for chunk, ones in zip(torch.split(x, 1 << 27), torch.split(grad_y, 1 << 27)):
        terms = step_grad_terms(chunk, step, ones, 4, True, None)
        exact += terms.sum().item()
        magnitude += terms.abs().sum().item()
    assert abs(grad_step.item() - exact) <= 1e-5 * magnitude


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_quantized_model_trains_without_host_sync(cuda, backend, seed, dtype):
    """A quantized CNN under autocast: after the first (initialising) step, forward, backward
    and the optimizer step (with its step-size clamp) never wait on the device."""
    import torch.nn.functional as F

    from tiny_models import small_cnn, toy_task

    model = small_cnn(batch_norm=True)
    lsq_fast.quantize_model(model, per_channel_weights=True, backend=backend)
    model.to(cuda)
    images, labels = (t.to(cuda) for t in toy_task(16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    first = step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            last = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert last.item() < first.item()
    for name, p in model.named_parameters():
        if name.endswith("quantizer.step"):
            assert p.dtype == p.grad.dtype == torch.float32 and bool((p > 0).all()), name


@pytest.mark.parametrize("axis", [None, 1])
def test_runs_on_the_inputs_device_not_the_current_one(backend, seed, axis):
    """Tensors on cuda:1 while cuda:0 is current: the kernels must run on cuda:1 (Triton
    launches on the current device unless told; the CUDA binding has a device guard)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    forward, backward = lsq_fast.ops.registry.lsq_ops(backend)
    shape = (4, 16, 9, 9)
    step = make_step(1 if axis is None else shape[axis])
    x, grad_y = make_x(shape, step, 4, True, axis), torch.randn(shape)
    with torch.cuda.device(0):
        on = torch.device("cuda:1")
        y = forward(x.to(on), step.to(on), -8, 7, axis, None)
        grad_x, grad_step = backward(grad_y.to(on), x.to(on), step.to(on), -8, 7, axis, None)
        assert torch.cuda.current_device() == 0
    assert y.device == grad_x.device == grad_step.device == on
    assert_same_bits(y.cpu(), reference.lsq_quantize(x, step, 4, channel_axis=axis))
    assert torch.equal(grad_x.cpu(), expected_grad_x(x, step, grad_y, 4, True, axis))
    assert_step_grad_close(grad_step.cpu(), x, step, grad_y, 4, True, axis)
