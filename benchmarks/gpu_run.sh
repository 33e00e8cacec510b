#!/usr/bin/env bash
# Single stages of GPU work, for a lent GPU machine (no network there), after the first run
# (benchmarks/gpu_check.sh does build + GPU tests + headline benchmark in one call). Each stage
# builds lsq_fast first where it is not built yet (into $SITE, see gpu_common.sh), writes its
# results and logs under $OUT (absolute or relative; the device tool gives an absolute one) and
# fits one device call (10 minutes). Commit what it measured under benchmarks/results/.
#
#   bash benchmarks/gpu_run.sh test      # every test on CUDA (the whole suite, GPU cases included)
#   bash benchmarks/gpu_run.sh sanitize  # compute-sanitizer memcheck + racecheck over a short run
#   bash benchmarks/gpu_run.sh sizes     # main + sizes suites up to 64M, float32 and bfloat16 (~8 min)
#   bash benchmarks/gpu_run.sh resnet18  # ResNet-18 suite                                      (~8 min)
#   bash benchmarks/gpu_run.sh family    # main suite for LSQ's relatives (lsq-arctan, lsq+, qil)
#   bash benchmarks/gpu_run.sh qat       # ResNet-18 training step, batch 256 bf16: float, lsq_fast, reference
#   bash benchmarks/gpu_run.sh pick      # cuda vs triton per key: $OUT/backend_table.json for "auto"
#   bash benchmarks/gpu_run.sh tune      # tile/warp candidates per size class (benchmarks/tune_triton.py)
#
# Several stages in one call run in order, each even if an earlier one failed; the exit status
# is the first failure's. LSQ_FAST_COMMIT=<hash> names the commit (the device machine's copy of
# the tree has no .git). ROUNDS sets timing rounds; REBUILD=1 builds again.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"

sanitize() {
    local san
    san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    if [ -z "$san" ]; then echo "compute-sanitizer not found" | tee "$OUT/sanitize.log"; return 1; fi
    # A short run of the contract on the CUDA kernels: every kernel kind, dtype and layout, few
    # repetitions (the tools slow every launch down by orders of magnitude).
    local tests=(-k "cuda and not triton and not gradcheck" test_ops_lsq.py test_torch_peer.py) rc=0
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer --tool $tool"
        (cd "$repo/tests" && timeout 280 "$san" --tool "$tool" --error-exitcode 3 --print-limit 20 \
            "$PY" -m pytest -q -x -p no:cacheprovider -rfE "${tests[@]}") >"$OUT/sanitize-$tool.log" 2>&1 || rc=$?
        tail -15 "$OUT/sanitize-$tool.log"
    done
    return "$rc"
}

stage() {
    case "$1" in
        test) run_tests 560 ;;
        sanitize) sanitize ;;
        sizes) bench bench-sizes 560 --suite main sizes --max-size 64M --dtype float32 bfloat16 --plot "$OUT/sizes" ;;
        resnet18) bench bench-resnet18 560 --suite resnet18 --dtype float32 bfloat16 --compile-dynamic ;;
        family) bench bench-family 560 --suite main --dtype float32 bfloat16 --quantizer lsq lsq-arctan lsq+ qil ;;
        qat) (cd /tmp && "$PY" "$repo/benchmarks/bench_qat.py" --device cuda --json "$OUT/qat.json" --markdown "$OUT/qat.md") 2>&1 | tee "$OUT/qat.log" ;;
        pick) (cd /tmp && "$PY" "$repo/benchmarks/pick_backends.py" --out "$OUT/backend_table.json") 2>&1 | tee "$OUT/pick.log" ;;
        tune) (cd /tmp && "$PY" "$repo/benchmarks/tune_triton.py" --json "$OUT/tune.json") 2>&1 | tee "$OUT/tune.log" ;;
        *) echo "unknown stage $1 (test, sanitize, sizes, resnet18, family, qat, pick, tune)"; return 2 ;;
    esac
}

[ $# -gt 0 ] || { echo "usage: bash benchmarks/gpu_run.sh STAGE [STAGE ...]; see the top of this file"; exit 2; }
has_gpu || { echo "no CUDA device visible to torch: these stages need a GPU"; exit 2; }
if [ "${REBUILD:-0}" = 1 ] || ! installed; then
    build "$OUT/build.log" 400 || exit 1
    installed || { echo "lsq_fast does not import from $SITE with its CUDA kernels"; exit 1; }
fi
environment "$OUT/environment.txt"
status=0
for name in "$@"; do
    stage "$name"
    rc=$?
    echo "== stage $name: exit $rc"
    [ "$status" -eq 0 ] && status=$rc
done
exit "$status"
