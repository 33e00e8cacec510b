#!/usr/bin/env bash
# The whole GPU run, for a lent GPU machine (no network there): build and install lsq_fast
# against the machine's torch, run the test suite on CUDA, run the GPU benchmarks. Results and
# logs go to $OUT (the device tool brings them back); commit them under benchmarks/results/.
#
#   bash benchmarks/gpu_run.sh test      # install, then pytest on CUDA (triton and cuda backends)
#   bash benchmarks/gpu_run.sh sanitize  # compute-sanitizer memcheck + racecheck over a short run
#   bash benchmarks/gpu_run.sh sizes     # install if needed, main + sizes suites (~8 min)
#   bash benchmarks/gpu_run.sh resnet18  # install if needed, ResNet-18 suite     (~8 min)
#   bash benchmarks/gpu_run.sh family    # install if needed, main suite for LSQ's relatives (lsq-arctan, lsq+, qil)
#   bash benchmarks/gpu_run.sh qat       # ResNet-18 training step, batch 256 bf16: float, lsq_fast, reference
#   bash benchmarks/gpu_run.sh pick      # cuda vs triton per key: $OUT/backend_table.json for "auto"
#   bash benchmarks/gpu_run.sh tune      # tile/warp candidates per size class (benchmarks/tune_triton.py)
#   bash benchmarks/gpu_run.sh all       # test, sizes, resnet18 (more than one device call allows)
#
# Each stage fits one device call (10 minutes). LSQ_FAST_COMMIT=<hash> names the commit in the
# results (the tree on the device machine is a copy without .git). ROUNDS sets timing rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
OUT=${OUT:-benchmarks/results/gpu-local}
ROUNDS=${ROUNDS:-20}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
repo=$(pwd)

# Installed, with the CUDA kernels built (a build that found no CUDA toolkit would skip them).
installed() { (cd /tmp && "$PY" -c "import lsq_fast, lsq_fast._triton.lsq; assert lsq_fast.backends.has_cuda_kernels()" >/dev/null 2>&1); }

install() {
    if installed && [ "${REINSTALL:-0}" != 1 ]; then return; fi
    echo "== install (pip install --no-build-isolation --no-deps .)"
    MAX_JOBS=$(nproc) "$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir -q . 2>&1 | tail -5
    installed || { echo "lsq_fast does not import after the install"; exit 1; }
}

environment() {
    {
        date -Is
        echo "commit: ${LSQ_FAST_COMMIT:-unknown}"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || echo "no nvidia-smi"
        (cd /tmp && "$PY" -c "import torch, triton, lsq_fast; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print('backends on cuda:', lsq_fast.available_backends('cuda'))")
    } | tee "$OUT/environment.txt"
}

run_tests() {
    echo "== tests on CUDA"
    # From tests/: `import lsq_fast` must find the installed package, not the source tree.
    (cd tests && "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$repo/$OUT/pytest.xml" "$@" 2>&1 | tee "$repo/$OUT/pytest.log" | tail -40)
}

sanitize() {
    local san
    san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
    if [ -z "$san" ]; then echo "compute-sanitizer not found" | tee "$OUT/sanitize.log"; return 1; fi
    # A short run of the contract on the CUDA kernels: every kernel kind, dtype and layout, few
    # repetitions (the tools slow every launch down by orders of magnitude).
    local tests=(-k "cuda and not triton and not gradcheck" test_lsq_contract.py test_torch_peer.py)
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer --tool $tool"
        (cd tests && timeout 280 "$san" --tool "$tool" --error-exitcode 3 --print-limit 20 \
            "$PY" -m pytest -q -x -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$repo/$OUT/sanitize-$tool.log" | tail -15)
    done
}

bench() {
    local name=$1; shift
    echo "== benchmark $name"
    "$PY" benchmarks/bench_lsq.py --device cuda --rounds "$ROUNDS" --dtype float32 bfloat16 \
        --json "$OUT/bench-$name.json" --markdown "$OUT/bench-$name.md" "$@" 2>&1 | tee "$OUT/bench-$name.log" | tail -60
}

install
environment
case "$stage" in
    test) run_tests ;;
    sizes) bench sizes --suite main sizes --plot "$OUT/sizes" ;;
    qat) "$PY" benchmarks/bench_qat.py --device cuda --json "$OUT/qat.json" --markdown "$OUT/qat.md" 2>&1 | tee "$OUT/qat.log" ;;
    resnet18) bench resnet18 --suite resnet18 --compile-dynamic ;;
    family) bench family --suite main --quantizer lsq lsq-arctan lsq+ qil ;;
    sanitize) sanitize ;;
    pick) "$PY" benchmarks/pick_backends.py --out "$OUT/backend_table.json" 2>&1 | tee "$OUT/pick.log" ;;
    tune) "$PY" benchmarks/tune_triton.py --json "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log" ;;
    all) run_tests; bench sizes --suite main sizes --plot "$OUT/sizes"; bench resnet18 --suite resnet18 --compile-dynamic ;;
    *) echo "unknown stage $stage (test, sanitize, sizes, resnet18, family, qat, pick, tune, all)"; exit 2 ;;
esac
