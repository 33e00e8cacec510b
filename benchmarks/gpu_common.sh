# Shared by benchmarks/gpu_check.sh (the first GPU run, in one call) and benchmarks/gpu_run.sh
# (one stage a call): sourced, never run. A lent GPU machine has no network and its own torch
# (2.11+cu130 on the H200 image, Python 3.12), so lsq_fast is built there, against that torch.
#
# Sets: repo (absolute), PY, OUT (absolute: the stages run from other folders; the device tool
# gives an absolute $OUT, a local run gets benchmarks/results/gpu-local), SITE (where lsq_fast is
# installed: a folder of its own on PYTHONPATH, so the machine's environment is left as it was).

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$repo/benchmarks/results/gpu-local}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SITE=${LSQ_FAST_SITE:-/tmp/lsq_fast-site}
export PYTHONUNBUFFERED=1 PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# True where torch sees a CUDA device.
has_gpu() { "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }

# The visible GPUs' architectures, "9.0" on an H200: what to build for, and nothing else.
gpu_archs() {
    "$PY" -c "import torch; print(';'.join(sorted({'%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})))"
}

# lsq_fast from $SITE (never the source tree), with its CUDA kernels.
installed() {
    (cd /tmp && "$PY" -c "import lsq_fast, lsq_fast._triton.lsq; assert lsq_fast.ops.backends.has_cuda_kernels()") >/dev/null 2>&1
}

# Builds and installs lsq_fast into $SITE, for the visible GPU's architecture only (setup.py's
# default list where no GPU is visible), in at most $2 s. The whole build output goes to $1: a
# failing build keeps every line of its error there; the console gets the lines naming an error.
build() {
    local log=$1 budget=$2 archs=""
    has_gpu && archs=$(gpu_archs)
    echo "== build for ${archs:-the default architectures of setup.py} into $SITE (at most $budget s; log: $log)"
    rm -rf "$SITE" "$SITE.build"
    local how=(-m pip install --no-build-isolation --no-deps --no-cache-dir --target "$SITE" -v .)
    if ! "$PY" -c "import setuptools.command.bdist_wheel" 2>/dev/null && ! "$PY" -c "import wheel" 2>/dev/null; then
        # setuptools before 70.1 and no wheel package (and no network to fetch one): pip cannot
        # build a wheel, so setuptools lays out the same package tree itself
        echo "note: no bdist_wheel here: building with setup.py build into $SITE"
        how=(setup.py build --build-lib "$SITE" --build-temp "$SITE.build")
    fi
    (cd "$repo" && env ${archs:+TORCH_CUDA_ARCH_LIST="$archs"} MAX_JOBS="$(nproc)" timeout "$budget" \
        "$PY" "${how[@]}") >"$log" 2>&1
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "build failed (exit $rc); the lines that name an error (all of it in $log):"
        grep -n -i -E "error|fatal" "$log" | head -40
        return "$rc"
    fi
    grep -m1 "lsq_fast: building the CUDA kernels" "$log" || echo "note: built without the CUDA kernels (a CPU torch, or LSQ_FAST_NO_CUDA=1)"
}

# Device, driver, versions and the commit, to $1 (and the console).
environment() {
    {
        date -Is
        echo "commit: ${LSQ_FAST_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null || echo "no nvidia-smi"
        echo "cpus: $(nproc)"
        (cd /tmp && "$PY" -c "
import torch
print('python', __import__('sys').version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)
try:
    import triton; print('triton', triton.__version__)
except ImportError:
    print('triton: not installed')
import lsq_fast
print('lsq_fast from', lsq_fast.__file__)
print('backends on cuda:', lsq_fast.available_backends('cuda'))
print('GPU visible:', torch.cuda.is_available())
") 2>&1
    } | tee "$1"
}

# pytest from tests/ (so that `import lsq_fast` finds $SITE), in parallel where pytest-xdist is
# there, each test stopped after GPU_TEST_TIMEOUT s where pytest-timeout is, and the whole run
# interrupted (SIGINT: pytest still writes its summary and the junit file) after $1 s.
# Failures and errors are named at the end of $OUT/pytest.log (-rfE; skips are counted, not listed).
run_tests() {
    local budget=$1
    shift
    local extra=()
    "$PY" -c "import xdist" 2>/dev/null && extra+=(-n "${GPU_TEST_WORKERS:-8}")
    "$PY" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout "${GPU_TEST_TIMEOUT:-240}")
    echo "== tests: pytest $* ${extra[*]} (at most ${budget} s; log: $OUT/pytest.log)"
    (cd "$repo/tests" && timeout --signal=INT --kill-after=30 "$budget" \
        "$PY" -m pytest -q -p no:cacheprovider -rfE "${extra[@]}" --junitxml="$OUT/pytest.xml" "$@") \
        >"$OUT/pytest.log" 2>&1
    local rc=$?
    tail -25 "$OUT/pytest.log"
    return "$rc"
}

# bench_lsq.py on the GPU, interrupted after $2 s: $1 names the outputs ($OUT/$1.{json,md,log});
# the rest are its arguments.
bench() {
    local name=$1 budget=$2
    shift 2
    echo "== benchmark $name: bench_lsq.py $* (at most $budget s)"
    (cd /tmp && timeout --signal=INT --kill-after=10 "$budget" "$PY" "$repo/benchmarks/bench_lsq.py" --device cuda \
        --rounds "${ROUNDS:-20}" --json "$OUT/$name.json" --markdown "$OUT/$name.md" "$@") >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -40 "$OUT/$name.log"
    return "$rc"
}
