#!/usr/bin/env bash
# A whole lent-GPU session in one call: build, the full test suite on CUDA, compute-sanitizer
# memcheck on a short subset, benchmarks of every op and backend, results CSV and a short table.
#
#   OUT=/some/dir SPECDEC_COMMIT=$(git rev-parse --short HEAD) benchmarks/gpu_session.sh
#
# One device call runs at most 10 minutes: split a session in two calls on the same warm machine
# (the in-place build is kept between them, so the second call's build is a no-op):
#   1. GPU_SESSION_SKIP="bench"                 build + tests (~4-6 min) + sanitizer
#   2. GPU_SESSION_SKIP="tests sanitizer"       benchmarks of every op (~4 min)
#   3. GPU_SESSION_SKIP="tests sanitizer bench" GPU_SESSION_DECODER=1
#                                               the decoder on a LLaVA-7B-shaped target (~3 min)
# Writes (at most 8 files, the device tool's limit): env.txt build.log tests.log sanitizer.log
# bench.json <results>.csv summary.md (decoder.csv for phase 3). Copy the CSVs into
# benchmarks/results/ and commit them.
# Env: SPECDEC_CUDA_ARCHS (default 90), GPU_SESSION_SKIP="tests sanitizer bench" to skip phases,
# BENCH_ARGS / TEST_ARGS extra pytest args for the benchmark / test phase (TEST_ARGS defaults to
# "-n 16 --runslow" where pytest-xdist is installed, as in the GPU image: the whole suite, slow
# statistical tests included, in about 4 minutes on an H100 machine); TESTS_TIMEOUT, SANITIZER_TIMEOUT,
# BENCH_TIMEOUT (seconds, defaults 300/120/240) bound each phase so one call fits a lease.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$PWD/.gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
skip() { [[ " ${GPU_SESSION_SKIP:-} " == *" $1 "* ]]; }
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
status=0

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $PY -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); print('device', torch.cuda.get_device_name(), 'SMs', torch.cuda.get_device_properties(0).multi_processor_count)"
  nvcc --version | tail -1
  echo "commit ${SPECDEC_COMMIT:-unknown}"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stamp "build (archs ${SPECDEC_CUDA_ARCHS:-90})"
if ! SPECDEC_CUDA_ARCHS=${SPECDEC_CUDA_ARCHS:-90} MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  stamp "BUILD FAILED"
  exit 1
fi
grep -iE "warning|error" "$OUT/build.log" | head -20

if ! skip tests; then
  if [[ -z "${TEST_ARGS+x}" ]]; then
    TEST_ARGS="--runslow"
    $PY -c "import xdist" 2>/dev/null && TEST_ARGS="-n 16 --runslow"
  fi
  stamp "tests (every backend, CUDA included)"
  timeout "${TESTS_TIMEOUT:-300}" $PY -m pytest -q -ra tests -p no:cacheprovider --durations=15 ${TEST_ARGS:-} \
    > "$OUT/tests.log" 2>&1 || status=1
  tail -25 "$OUT/tests.log"
fi

if ! skip sanitizer; then
  stamp "compute-sanitizer memcheck (CUDA backend, short subset)"
  timeout "${SANITIZER_TIMEOUT:-120}" compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
    $PY -m pytest -q -x tests -k "${SANITIZER_TESTS:-cuda and (golden or matches_reference_variants or graph)}" \
    -p no:cacheprovider > "$OUT/sanitizer.log" 2>&1 || status=1
  grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer.log" | tail -5
fi

if ! skip bench; then
  stamp "benchmarks"
  timeout "${BENCH_TIMEOUT:-240}" $PY -m pytest -q benchmarks -p no:cacheprovider \
    --benchmark-json="$OUT/bench.json" --benchmark-max-time=0.1 ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1 || status=1
  tail -5 "$OUT/bench.log"
  csv=$($PY benchmarks/record.py "$OUT/bench.json" --out-dir "$OUT" --commit "${SPECDEC_COMMIT:-unknown}" | tail -1)
  echo "results: $csv"
  $PY benchmarks/record.py --markdown "$csv" > "$OUT/summary.md" && cat "$OUT/summary.md"
  rm -f "$OUT/bench.log"  # its content is in bench.json; keeps the file count under the limit
fi
if [[ -n "${GPU_SESSION_DECODER:-}" ]]; then
  stamp "decoder: LLaVA-7B-shaped target, 115M-shaped drafter (random fp16 weights)"
  timeout "${DECODER_TIMEOUT:-420}" $PY benchmarks/decoder_overhead.py --shape llava7b \
    --out "$OUT/decoder-llava7b-${SPECDEC_COMMIT:-unknown}.csv" || status=1
fi
stamp "done (status $status)"
exit $status
