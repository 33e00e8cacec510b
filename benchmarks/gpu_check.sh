#!/usr/bin/env bash
# The first GPU run, in one call: build lsq_fast for the GPU's architecture, run the GPU tests
# (-m gpu) in parallel, run the headline benchmark, and write everything under $OUT:
#
#   summary.md      stages (status, seconds), test counts and every failing test, the headline table
#   environment.txt device, driver, versions, commit
#   build.log       the whole build output (a failing build keeps every line of its error)
#   pytest.log, pytest.xml   the GPU tests (junit written even when the time limit interrupts them)
#   bench.json, bench.md, bench.log   sizes 4K-256M, float32 and bfloat16, fwd and fwd+bwd:
#                   lsq_fast's backends (auto, cuda, triton) and torch's learnable op, with the
#                   measured copy ceiling (no torch.compile provider: its compiles would eat the call)
#   llm.json, llm.md, llm.log   the llm suite (per-group LLM weights), lsq_fast's backends, fwd+bwd
#
# With the device tool, from the repository root (its $OUT is absolute; the tree has no .git):
#   run(command="LSQ_FAST_COMMIT=<hash> bash benchmarks/gpu_check.sh", timeout_s=600)
# Budget: under 9 minutes in all (GPU_CHECK_SECONDS, default 530), shared by the stages in
# order: each stage gets what is left less what the later ones need at least, and runs even
# if an earlier one failed, except that nothing runs without a build. Exit 0 only when every
# stage passed. Without a GPU it builds and says so: the tests and the benchmark need one (exit 2).
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"

start=$SECONDS
total=${GPU_CHECK_SECONDS:-530}
stages="$OUT/stages.tsv"
printf "stage\tstatus\tseconds\tnote\n" >"$stages"

# Seconds left for a stage that must leave $1 seconds to the stages after it.
left() { echo $((total - (SECONDS - start) - $1)); }

record() {  # stage, exit status ("-": not run), seconds, note
    local status=passed
    [ "$2" = - ] && status="not run"
    [ "$2" != - ] && [ "$2" -ne 0 ] && status="failed (exit $2)"
    [ "$2" = 124 ] && status="timed out (exit 124)"
    printf "%s\t%s\t%s\t%s\n" "$1" "$status" "$3" "$4" >>"$stages"
}

finish() {
    rm -f "$OUT/summary.md.tmp"
    "$PY" "$repo/benchmarks/gpu_summary.py" --out "$OUT" >"$OUT/summary.md.tmp" 2>&1 && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
    rm -f "$stages"
    cat "$OUT/summary.md" 2>/dev/null || cat "$OUT/summary.md.tmp"
    exit "$1"
}

failed=0
t=$SECONDS
build "$OUT/build.log" "$(left 330)"
rc=$?
record build "$rc" $((SECONDS - t)) "TORCH_CUDA_ARCH_LIST=$(has_gpu && gpu_archs || echo default)"
environment "$OUT/environment.txt"  # after the build: it reports the backends lsq_fast has
[ "$rc" -ne 0 ] && finish 1
if ! has_gpu; then
    record tests - 0 "no CUDA device visible to torch: the GPU tests need one"
    record bench - 0 "no CUDA device: the benchmark needs one"
    echo "no CUDA device: lsq_fast is built, but the GPU tests and the benchmark need a GPU (exit 2)"
    finish 2
fi
installed || { record import 1 0 "lsq_fast does not import from $SITE with its CUDA kernels"; finish 1; }

t=$SECONDS
run_tests "$(left 170)" -m gpu
rc=$?
record tests "$rc" $((SECONDS - t)) "pytest -m gpu"
[ "$rc" -ne 0 ] && failed=1

t=$SECONDS
budget=$(left 70)
bench bench "$budget" --suite sizes --max-size 256M --dtype float32 bfloat16 --modes fwd fwd+bwd \
    --providers lsq_fast lsq_fast:cuda lsq_fast:triton torch_learnable
rc=$?
record bench "$rc" $((SECONDS - t)) "sizes 4K-256M, float32 and bfloat16, fwd and fwd+bwd (at most $budget s)"
[ "$rc" -ne 0 ] && failed=1

# Per-group steps (issue 17's GPU target: 85% of copy on the large shapes): the Llama-3-8B
# block's weights, lsq_fast's backends only (no compiles).
t=$SECONDS
budget=$(left 10)
bench llm "$budget" --suite llm --dtype bfloat16 float32 --modes fwd+bwd --providers lsq_fast lsq_fast:cuda lsq_fast:triton
rc=$?
record llm "$rc" $((SECONDS - t)) "llm suite, per-group steps, bfloat16 and float32, fwd+bwd (at most $budget s)"
[ "$rc" -ne 0 ] && failed=1
finish "$failed"
