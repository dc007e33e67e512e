#!/usr/bin/env bash
# The GPU check: the tests that need CUDA (pytest -m cuda), then the side-by-side benchmark of
# benchmarks/gpu_bench.py (generation at the d16 shape, B=2 and B=64, fp32 and bf16, eager and compiled, with
# and without --cfg-scales; a d16 training step; the reference too with --ref), written into the folder OUT:
# gpu_bench.json (every figure, the machine and the tests' counts), gpu_bench.md (the tables), cuda_tests.log
# and cuda_tests.xml. Planned for under 8 minutes on one GPU.
#
#   benchmarks/gpu_check.sh OUT [--ref /path/to/VAR]     on a machine with a CUDA GPU
#   benchmarks/gpu_check.sh --dry-run OUT                 every step at tiny sizes on the CPU, in seconds
#
# The dry run runs the CUDA tests on the CPU (VAR_CUDA_TESTS_DEVICE=cpu) and the benchmark with --dry-run: it
# checks the script before a GPU is at hand (tests/test_gpu_check.py runs it), and measures nothing. The exit
# status is the tests' when they fail, else the benchmark's.
set -euo pipefail

usage() { echo "usage: $0 [--dry-run] OUT [--ref PATH_TO_FoundationVision_VAR]" >&2; exit 2; }

dry_run=0 out="" ref=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --ref) [ $# -ge 2 ] || usage; ref=(--ref "$2"); shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [ -z "$out" ] || usage; out="$1" ;;
    esac
    shift
done
[ -n "$out" ] || usage

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"

bench=()
if [ "$dry_run" = 1 ]; then
    export VAR_CUDA_TESTS_DEVICE=cpu
    bench=(--dry-run)
elif ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device: run this on a GPU machine, or with --dry-run to check it on the CPU" >&2
    exit 2
fi

echo "== tests that need CUDA (pytest -m cuda)$([ "$dry_run" = 1 ] && echo ', on the CPU: dry run')"
set +e
"$python" -m pytest -m cuda -q -p no:cacheprovider --junitxml "$out/cuda_tests.xml" tests 2>&1 | tee "$out/cuda_tests.log"
tests_status=${PIPESTATUS[0]}
set -e

echo "== benchmark (benchmarks/gpu_bench.py)"
"$python" benchmarks/gpu_bench.py "$out" "${bench[@]}" "${ref[@]}" --tests-junit "$out/cuda_tests.xml"
echo "wrote $out/gpu_bench.json and $out/gpu_bench.md"
if [ "$tests_status" != 0 ]; then
    echo "the CUDA tests failed (pytest exit status $tests_status): see $out/cuda_tests.log" >&2
    exit "$tests_status"
fi
