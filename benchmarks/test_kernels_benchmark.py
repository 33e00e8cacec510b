"""The kernel benchmark as a pytest-benchmark suite, for users who track regressions that way:

    .venv/bin/python -m pytest benchmarks/test_kernels_benchmark.py --benchmark-only
    make bench-pytest                                  # the same
    ... --benchmark-save=base, later --benchmark-compare=0001 --benchmark-compare-fail=median:10%

Same providers, tensors and modes as benchmarks/bench_lsq.py (its `main` suite and the
ResNet-18 tensors at batch 8), on CUDA when there is one, for LSQ; LSQ's relatives
(benchmarks/quantizers.py: lsq-arctan, lsq+, qil) on the `main` suite's two tensors, as
`make bench` times them. These are benchmarks, not tests: nothing here asserts a speed.
"""

import pytest
import torch

from bench_lsq import DTYPES, MODES, PROVIDERS, Options, applies, make_thunk
from cases import SUITES, make_inputs, suite_cases
from env_info import keep_freed_memory
from quantizers import QUANTIZERS

keep_freed_memory()  # the allocator setting of bench_lsq.py (see its help)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = {c.name: c for c in SUITES["main"] + suite_cases("resnet18", batch=8)}
# (quantizer, case): LSQ on every tensor, its relatives on the main suite's. LSQ's ids and groups
# stay the case's name alone, so that runs saved before the relatives came still compare.
QUANTIZED = [("lsq", name) for name in CASES] + [
    (q, c.name) for q in QUANTIZERS if q != "lsq" for c in SUITES["main"]
]
IDS = [c if q == "lsq" else f"{q}-{c}" for q, c in QUANTIZED]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "lsq_fast:triton" or DEVICE.type == "cuda"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("quantizer,case", QUANTIZED, ids=IDS)
def test_lsq(benchmark, quantizer, case, dtype, provider, mode):
    q, case = QUANTIZERS[quantizer], CASES[case]
    if not applies(provider, q, DEVICE):
        pytest.skip(f"{provider} does not compute {quantizer} on {DEVICE.type}")
    inputs = make_inputs(case, DTYPES[dtype], DEVICE, params=q.params)
    fn = PROVIDERS[provider](q, case, inputs, Options())
    if fn is None:
        pytest.skip(f"{provider} does not run {quantizer} in {dtype} on {DEVICE.type}")
    thunk = make_thunk(fn, mode, inputs)
    benchmark.group = f"{'' if quantizer == 'lsq' else quantizer + ' '}{case.name} {dtype} {mode}"
    benchmark.extra_info.update(quantizer=quantizer, elements=case.numel, device=str(DEVICE))
    if DEVICE.type == "cuda":  # time the kernels, not their launch
        benchmark(lambda: (thunk(), torch.cuda.synchronize()))
    else:
        benchmark(thunk)
