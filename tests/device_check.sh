#!/usr/bin/env bash
# scripts/device-check as a dry run where there is no GPU, on what
# `scripts/device-check --prepare` gathered in BUILD/device-carry (skipped
# without it: the CI step `make test-cuda` makes it): the programs load
# StarPU from the carried libraries and the Debian packages unpacked into a
# private prefix, `eellm info` reports a CUDA StarPU and no GPU, the GPU
# checks say they are skipped and the default model's row has every figure.
# With a GPU, gpu_parity must pass and both models get their rows.
set -u
build=${1:-build}
carry=$build/device-carry
if [ ! -x "$carry/bin/eellm" ]; then
  echo "device_check: skipped: no $carry (scripts/device-check --prepare makes it)"
  exit 77
fi
. "$(dirname "$0")/lib.sh"

CUDA_BUILD=$build PYTHON=/usr/bin/python3 timeout 600 scripts/device-check > "$tmp/log" 2>&1
status=$?
check "device-check runs" '[ $status -eq 0 ]'
check "StarPU from the carried libraries" \
  grep -q "^device-check: StarPU from $(realpath "$carry")/lib/libstarpu-1.3.so" "$tmp/log"
check "a CUDA StarPU" grep -Eq '^StarPU: +1\.3\.10 \(CUDA yes, MPI yes, max CPUs 64, max buffers per task 16\)$' "$tmp/log"
number='[0-9]+(\.[0-9]+)?'
row() { echo "^$1 +$2 +$3 +$number +$number% +$number +$number% +$number +$number\$"; }
if grep -q '^GPU 0:' "$tmp/log"; then
  check "gpu_parity passed" grep -q '^gpu_parity: passed$' "$tmp/log"
  check "default model row" grep -Eq "$(row default 8 128)" "$tmp/log"
  check "GPT-2-small row" grep -Eq "$(row gpt2-small 8 1024)" "$tmp/log"
else
  check "no GPU said" grep -q '^device-check: no GPU here' "$tmp/log"
  check "gpu_parity skipped" grep -Eq '^gpu_parity: (skipped|not built)' "$tmp/log"
  check "default model row" grep -Eq "$(row default 2 32)" "$tmp/log"
  check "GPT-2-small skipped" grep -q '^gpt2-small: skipped (no GPU)$' "$tmp/log"
fi
[ "$failed" -eq 0 ] || cat "$tmp/log"

finish device_check
