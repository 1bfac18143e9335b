#!/usr/bin/env bash
# Data parallelism over MPI ranks (mpirun --oversubscribe on loopback): each
# replica takes its share of every micro-batch and the gradients are summed by
# all-reduce tasks, so (pp, tp, dp) = (1, 1, 2), (1, 1, 2) with ZeRO-1 and
# (2, 1, 2) reproduce the single-process run: per-exit losses and the updated
# weights and AdamW moments within 1e-5 relative over 3 steps, and so does a
# step under a loss mask that weighs the shares unequally. Checkpoints
# move between layouts, and wrong layouts are refused with one line.
#
# The models: parallel_models in lib.sh.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 EELLM_STARPU_HOME="$tmp/starpu"

byte_corpus 3 80
parallel_models
layout() { { cat tests/specs/pipe.train.txtpb; echo "parallelism { $2 }"; } > "$tmp/$1.train.txtpb"; }
layout single "pp: 1"
layout dp2 "dp: 2"
layout zero "dp: 2 zero_stage: 1"
layout pp2dp2 "pp: 2 dp: 2"
single_runs
parallel_run gpt-dp2 gpt dp2 2
parallel_run gpt-zero gpt zero 2
parallel_run llama-pp2dp2 llama pp2dp2 4

# The layout table: one line per rank; ZeRO-1 halves each rank's moments.
check "the layout is printed, one line per rank" \
  '[ "$(grep -c "^rank [0-3]: stage [01] (layers [0-9]-[0-9]), replica [01], tensor 0; AdamW moments" "$tmp/llama-pp2dp2.log")" -eq 4 ]'
kib() { sed -n "s/^rank $2: .*AdamW moments \([0-9.]*\) KiB$/\1/p" "$tmp/$1.log"; }
full=$(kib gpt-dp2 0) half0=$(kib gpt-zero 0) half1=$(kib gpt-zero 1)
check "ZeRO-1 shares the moments out ($full KiB per rank -> $half0 + $half1 KiB)" \
  "/usr/bin/python3 -c 'import sys; f, a, b = map(float, sys.argv[1:]); sys.exit(not (abs(a + b - f) < 0.2 and max(a, b) < 0.6 * f))' '$full' '$half0' '$half1'"

# A loss mask that leaves the replicas 14 and 3 tokens: their weighed gradients
# still sum to the single-process one (tests/dp_mask.c).
"$build/tests/dp_mask" "$tmp/mask1.txt" > "$tmp/mask.log" 2>&1 &&
  mpi 2 "$build/tests/dp_mask" "$tmp/mask2.txt" >> "$tmp/mask.log" 2>&1
status=$?
check "masked step in one process and on 2 replicas ($(tail -1 "$tmp/mask.log"))" '[ $status -eq 0 ]'
/usr/bin/python3 - "$tmp/mask1.txt" "$tmp/mask2.txt" > "$tmp/mask.close" 2>&1 <<'EOT'
import math, sys
a, b = ({l.split()[0]: [float(v) for v in l.split()[1:]] for l in open(p)} for p in sys.argv[1:])
assert a.keys() == b.keys(), "different tensors"
norm = lambda v: math.sqrt(sum(x * x for x in v))
worst, name = max((norm([x - y for x, y in zip(a[k], b[k])]) / (norm(a[k]) or 1), k) for k in a)
print(f"largest relative difference {worst:.2e} ({name})")
sys.exit(0 if worst <= 1e-5 else 1)
EOT
status=$?
check "masked losses and gradients equal the single process's ($(cat "$tmp/mask.close"))" '[ $status -eq 0 ]'

# Checkpoints cross layouts: (2, 1, 2) -> one process, one process -> ZeRO-1 (1, 1, 2).
train --model "$tmp/llama.txtpb" --train "$tmp/single.train.txtpb" --out "$tmp/llama-5" > /dev/null 2>&1
resumed_at from-pp2dp2 llama llama-pp2dp2 single 1 "(2, 1, 2) checkpoint resumed in one process"
resumed_at from-single llama llama-1 zero 2 "single-process checkpoint resumed under ZeRO-1 on 2 replicas"

# Wrong layouts: one clear line each.
layout dp4 "dp: 4"
layout zero2 "dp: 2 zero_stage: 2"
layout tp2 "tp: 2"
# refused LAYOUT PATTERN: one process training under LAYOUT fails with one line.
refused() {
  expect_error "$1 refused" "$2" train --model "$tmp/gpt.txtpb" --train "$tmp/$1.train.txtpb" \
    --out "$tmp/bad-$1"
}
refused dp4 "dp4\.train\.txtpb:.*field 'global_batch': value 12 is not a multiple of micro_batches 6 x dp 4$"
refused zero2 "field 'parallelism\.zero_stage': value 2 outside 0\.\.1"
refused tp2 "parallelism pp 1 x tp 2 x dp 1 needs 2 ranks: start it with mpirun -np 2"
refused dp2 "parallelism pp 1 x tp 1 x dp 2 needs 2 ranks: start it with mpirun -np 2"
start=$(date +%s)
mpi 3 "$eellm" train --model "$tmp/gpt.txtpb" --data "$tmp/train.bin" --train "$tmp/pp2dp2.train.txtpb" \
  --out "$tmp/wrong" > "$tmp/wrong.log" 2>&1
status=$?
took=$(( $(date +%s) - start ))
check "wrong world size fails (status $status)" '[ $status -ne 0 ] && [ $status -ne 124 ]'
check "wrong world size fails within seconds ($took s)" '[ $took -lt 30 ]'
check "wrong world size says so once" \
  '[ "$(grep -c "parallelism pp 2 x tp 1 x dp 2 needs 4 ranks, mpirun started 3" "$tmp/wrong.log")" -eq 1 ]'

finish data_parallel_mpi
