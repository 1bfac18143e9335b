#!/usr/bin/env bash
# Tensor parallelism over MPI ranks (mpirun --oversubscribe on loopback),
# alone and composed with the pipeline and data parallelism: (pp, tp, dp) =
# (1, 2, 1), (1, 2, 2), (2, 2, 1) and (2, 2, 2) reproduce the single-process
# run (per-exit losses, updated weights and AdamW moments within 1e-5
# relative over 3 steps) on a model with a tied NORM exit, an untied MLP exit
# on the second stage and a vocabulary of 257 that tp 2 splits unevenly. A
# checkpoint saved at (2, 2, 2) resumes in one process and at (1, 2, 1) with
# the single-process run's next losses, and wrong layouts are refused with one
# line. (Layouts without tp: data_parallel_mpi.sh; the models: parallel_models
# in lib.sh.)
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 EELLM_STARPU_HOME="$tmp/starpu"

byte_corpus 3 80
parallel_models
# Two micro-batches of 2 sequences a step: each rank of 8 on 2 cores has few collectives to wait in.
# AdamW's eps at 1e-6: its first update of an element is lr g / (|g| + eps), and where a
# gradient is ~1e-8 by chance (a few of the model's 60 K) its slope 1 / eps turns the
# rounding noise of summing the parts in another order into 1e-5 of the tensor.
layout() {
  { sed 's/^global_batch: .*/global_batch: 4/; s/^micro_batches: .*/micro_batches: 2/;
         s/^optimizer { /optimizer { eps: 1e-6 /' tests/specs/pipe.train.txtpb
    echo "parallelism { $2 }"; } > "$tmp/$1.train.txtpb"
}
layout single "pp: 1"
layout tp2 "tp: 2"
layout tp2dp2 "tp: 2 dp: 2"
layout pp2tp2 "pp: 2 tp: 2"
layout all "pp: 2 tp: 2 dp: 2"
single_runs
parallel_run gpt-tp2 gpt tp2 2
parallel_run llama-tp2dp2 llama tp2dp2 4
parallel_run llama-pp2tp2 llama pp2tp2 4
parallel_run gpt-all gpt all 8

check "the layout is printed, tensor index innermost" \
  '[ "$(grep -c "^rank [0-7]: stage [01] (layers [0-9]-[0-9]), replica [01], tensor [01]; AdamW moments" "$tmp/gpt-all.log")" -eq 8 ] &&
   grep -q "^rank 5: stage 1 (layers 3-4), replica 0, tensor 1;" "$tmp/gpt-all.log"'
kib() { sed -n "s/^rank $2: .*AdamW moments \([0-9.]*\) KiB$/\1/p" "$tmp/$1.log"; }
whole=$(/usr/bin/python3 -c "import sys; print(2 * 4 * $(grep -o '[0-9]* parameters' "$tmp/gpt-tp2.log" | cut -d' ' -f1) / 1024)")
# Each rank keeps half of the split tensors' moments, and all of the whole ones' (norms, positions).
check "tp 2 about halves each rank's moments ($whole KiB -> $(kib gpt-tp2 0) + $(kib gpt-tp2 1) KiB)" \
  "/usr/bin/python3 -c 'import sys; f, a, b = map(float, sys.argv[1:]); sys.exit(not (a + b >= f and max(a, b) < 0.55 * f))' '$whole' '$(kib gpt-tp2 0)' '$(kib gpt-tp2 1)'"

# A (2, 2, 2) checkpoint (step 3) resumed in one process and at (1, 2, 1): the
# losses of steps 4 and 5 are the 5-step single-process run's.
train --model "$tmp/gpt.txtpb" --train "$tmp/single.train.txtpb" --out "$tmp/gpt-5" > /dev/null 2>&1
resumed_at to-single gpt gpt-all single 1 "(2, 2, 2) checkpoint resumed in one process"
resumed_at to-tp2 gpt gpt-all tp2 2 "(2, 2, 2) checkpoint resumed at (1, 2, 1)"

# Wrong layouts: one clear line each, from one process or from rank 0 of many.
layout tp3 "tp: 3"
expect_error "tp not dividing the heads refused" \
  "tp3\.train\.txtpb:.*field 'parallelism\.tp': value 3 does not divide n_heads 2$" \
  train --model "$tmp/gpt.txtpb" --train "$tmp/tp3.train.txtpb" --out "$tmp/bad-tp3"
sed 's/^n_heads: .*/n_heads: 4/; s/^ffn_size: .*/ffn_size: 66/' "$tmp/gpt.txtpb" > "$tmp/odd-ffn.txtpb"
layout tp4 "tp: 4"
expect_error "tp not dividing the MLP refused" \
  "field 'parallelism\.tp': value 4 does not divide the MLP's 66 hidden units \(ffn_size\)$" \
  train --model "$tmp/odd-ffn.txtpb" --train "$tmp/tp4.train.txtpb" --out "$tmp/bad-tp4"
start=$(date +%s)
mpi 3 "$eellm" train --model "$tmp/gpt.txtpb" --data "$tmp/train.bin" --train "$tmp/tp2dp2.train.txtpb" \
  --out "$tmp/wrong" > "$tmp/wrong.log" 2>&1
status=$?
took=$(( $(date +%s) - start ))
check "wrong world size fails within seconds (status $status, $took s)" \
  '[ $status -ne 0 ] && [ $status -ne 124 ] && [ $took -lt 30 ]'
check "wrong world size says so once" \
  '[ "$(grep -c "parallelism pp 1 x tp 2 x dp 2 needs 4 ranks, mpirun started 3" "$tmp/wrong.log")" -eq 1 ]'

finish tensor_parallel_mpi
