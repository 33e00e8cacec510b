"""The kernel benchmark as a pytest-benchmark suite, for users who track regressions that way:

    .venv/bin/python -m pytest benchmarks/test_kernels_benchmark.py --benchmark-only
    make bench-pytest                                  # the same
    ... --benchmark-save=base, later --benchmark-compare=0001 --benchmark-compare-fail=median:10%

Same providers, tensors and modes as benchmarks/bench_lsq.py (its `main` suite and the
ResNet-18 tensors at batch 8), on CUDA when there is one. These are benchmarks, not tests:
nothing here asserts a speed.
"""

import pytest
import torch

from bench_lsq import DTYPES, MODES, PROVIDERS, Options, make_thunk
from cases import SUITES, make_inputs, suite_cases
from env_info import keep_freed_memory

keep_freed_memory()  # the allocator setting of bench_lsq.py (see its help)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = {c.name: c for c in SUITES["main"] + suite_cases("resnet18", batch=8)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "lsq_fast:triton" or DEVICE.type == "cuda"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_lsq(benchmark, case, dtype, provider, mode):
    case = CASES[case]
    inputs = make_inputs(case, DTYPES[dtype], DEVICE)
    fn = PROVIDERS[provider](case, inputs, Options())
    if fn is None:
        pytest.skip(f"{provider} does not run {dtype} on {DEVICE.type}")
    thunk = make_thunk(fn, mode, [inputs])
    benchmark.group = f"{case.name} {dtype} {mode}"
    benchmark.extra_info.update(elements=case.numel, device=str(DEVICE))
    if DEVICE.type == "cuda":  # time the kernels, not their launch
        benchmark(lambda: (thunk(), torch.cuda.synchronize()))
    else:
        benchmark(thunk)
