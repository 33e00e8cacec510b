import os
import random
from typing import NamedTuple

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter. It has to be
# chosen before Triton compiles anything, so here, before the first test. torch.cuda.is_available
# asks the driver for a device count; it creates no CUDA context.
if "TRITON_INTERPRET" not in os.environ and not (torch.version.cuda and torch.cuda.is_available()):
    os.environ["TRITON_INTERPRET"] = "1"

import lsq_fast  # noqa: E402


def pytest_report_header(config):
    interp = "Triton interpreter on CPU tensors" if lsq_fast.ops.backends.triton_interpreting() else "Triton compiled"
    return (
        f"lsq_fast CPU kernels: {lsq_fast.cpu_isa()}; {interp}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


@pytest.fixture
def seed(request):
    """Fresh random inputs every run; LSQ_FAST_TEST_SEED=<n> replays a failure."""
    value = int(os.environ.get("LSQ_FAST_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    print(f"seed = {value} (replay with LSQ_FAST_TEST_SEED={value})")
    return value


class Impl(NamedTuple):
    """A fused backend and the device its tensors live on."""

    device: str
    backend: str

    def put(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)  # keeps the strides of dense tensors (channels_last, transposes)


_IMPLS = {
    "cpu": Impl("cpu", "cpu"),
    "triton-interpreter": Impl("cpu", "triton"),
    "triton-cuda": Impl("cuda", "triton"),
    "cuda": Impl("cuda", "cuda"),
}


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.gpu] if "cuda" in name else []) for name in _IMPLS])
def impl(request) -> Impl:
    """Each fused backend in turn: the CPU kernels, the Triton kernels under the interpreter
    (CI), the Triton kernels on a GPU, the CUDA C++ kernels. Those that cannot run here skip,
    at setup time."""
    chosen = _IMPLS[request.param]
    if chosen.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if chosen.backend not in lsq_fast.available_backends(chosen.device):
        pytest.skip(f"backend {chosen.backend!r} does not run on {chosen.device} tensors in this process")
    return chosen
