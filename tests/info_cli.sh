#!/usr/bin/env bash
# `eellm info`: the StarPU line (version, CUDA, MPI, limits), the workers by
# kind and the scheduler (lws without CUDA workers, dmdas with them,
# STARPU_SCHED first), the BLAS line (OpenBLAS's kernels fit to the CPU), the kernels
# line (which build of eellm's CPU kernels runs) and
# the GPUs; --help; bad usage and a runtime that cannot start give one line and
# a non-zero status.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"

STARPU_NCPU=1 "$eellm" info > "$tmp/info" 2> "$tmp/stderr"
status=$?
check "info runs" '[ $status -eq 0 ] && [ ! -s "$tmp/stderr" ]'
check "StarPU line" grep -Eq '^StarPU: +1\.3\.[0-9]+ \(CUDA (yes|no), MPI yes, max CPUs [0-9]+, max buffers per task [0-9]+\)$' "$tmp/info"
check "one CPU worker" grep -Eq '^workers: +1 CPU, [0-9]+ CUDA$' "$tmp/info"
check "BLAS line" grep -Eq '^BLAS: +OpenBLAS [0-9.]+ .* \(core [A-Za-z0-9_]+\)$' "$tmp/info"
# eellm's own CPU kernels: the AVX-512 build wherever the CPU has x86-64-v4's extensions.
check "kernels line" grep -Eq '^kernels: +(x86-64-v4 \(AVX-512\)|x86-64-v3 \(AVX2, FMA\)|x86-64 \(SSE2\)|portable C)$' "$tmp/info"
if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo &&
  grep -qw avx512vl /proc/cpuinfo && grep -qw avx512cd /proc/cpuinfo; then
  check "AVX-512 kernels on an AVX-512 CPU" grep -Eq '^kernels: +x86-64-v4 \(AVX-512\)$' "$tmp/info"
fi
check "GPU lines" grep -Eq '^(GPUs: +none|GPU 0: +.+, [0-9]+ MiB, compute capability [0-9]+\.[0-9]+)' "$tmp/info"
# OpenBLAS's kernels: the user's OPENBLAS_CORETYPE is kept; unset, a CPU with AVX2 and FMA
# runs vector kernels even where OpenBLAS does not know its model (eellm_blas_fit_cpu).
OPENBLAS_CORETYPE=Prescott STARPU_NCPU=1 "$eellm" info > "$tmp/blas" 2>&1
check "OPENBLAS_CORETYPE kept" grep -Eq '\(core Prescott\)$' "$tmp/blas"
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  env -u OPENBLAS_CORETYPE STARPU_NCPU=1 "$eellm" info > "$tmp/blas" 2>&1
  check "vector kernels on an AVX2 CPU" \
    grep -Eq '\(core (Haswell|Zen|Excavator|SkylakeX|Cooperlake|SapphireRapids)\)$' "$tmp/blas"
fi
cuda_workers=$(sed -n 's/^workers: .* \([0-9]*\) CUDA$/\1/p' "$tmp/info")
expected_sched=lws
[ "${cuda_workers:-0}" -gt 0 ] && expected_sched=dmdas
check "scheduler by worker kinds" grep -Eq "^scheduler: +$expected_sched\$" "$tmp/info"
if grep -q 'CUDA no' "$tmp/info"; then
  check "no CUDA, no GPUs" grep -q '^GPUs: *none (this StarPU has no CUDA)$' "$tmp/info"
fi

STARPU_NCPU=1 STARPU_NCUDA=0 "$eellm" info > "$tmp/info" 2>&1
check "STARPU_NCUDA=0: lws" grep -Eq '^scheduler: +lws$' "$tmp/info"
STARPU_NCPU=1 STARPU_SCHED=prio "$eellm" info > "$tmp/info" 2>&1
check "STARPU_SCHED overrides" grep -Eq '^scheduler: +prio$' "$tmp/info"

"$eellm" info --help > "$tmp/help"
status=$?
check "--help" '[ $status -eq 0 ] && grep -q "^usage: eellm info" "$tmp/help"'
check "listed in eellm --help" '"$eellm" --help | grep -Eq "^  info +"'
expect_error "extra argument" "^eellm info: unexpected argument 'x' \(see 'eellm info --help'\)$" "$eellm" info x
STARPU_NCPU=0 STARPU_NCUDA=0 "$eellm" info > /dev/null 2> "$tmp/stderr"
status=$?
check "no workers: status 1, one line" \
  '[ $status -eq 1 ] && [ "$(wc -l < "$tmp/stderr")" -eq 1 ] && grep -q "^eellm info: starting StarPU failed" "$tmp/stderr"'

finish info_cli
