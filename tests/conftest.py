import os
import random

import pytest
import torch


def pytest_report_header(config):
    import lsq_fast

    return f"lsq_fast CPU kernels: {lsq_fast.cpu_isa()}; torch {torch.__version__}, {torch.get_num_threads()} threads"


@pytest.fixture
def seed(request):
    """Fresh random inputs every run; LSQ_FAST_TEST_SEED=<n> replays a failure."""
    value = int(os.environ.get("LSQ_FAST_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    print(f"seed = {value} (replay with LSQ_FAST_TEST_SEED={value})")
    return value
