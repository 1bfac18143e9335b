#!/usr/bin/env bash
# Pipeline parallelism over MPI ranks (mpirun --oversubscribe on loopback):
# P = 2 and P = 4 reproduce the single-process run's per-exit losses over the
# same steps, seed, data and micro-batches (relative error <= 1e-5); a wrong
# rank count fails fast; checkpoints move between pipelined and single-process
# runs both ways.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 EELLM_STARPU_HOME="$tmp/starpu"

model=tests/specs/pipe.txtpb
byte_corpus 3 80
for p in 1 2 4; do
  { cat tests/specs/pipe.train.txtpb; echo "parallelism { pp: $p }"; } > "$tmp/pp$p.txtpb"
done
train() { "$eellm" train --model $model --data "$tmp/train.bin" "$@"; }
mpi() { timeout 300 scripts/eellm-mpirun "$@"; }

train --train "$tmp/pp1.txtpb" --out "$tmp/single" --steps 3 > /dev/null 2>&1
status=$?
check "single-process run" '[ $status -eq 0 ]'
for p in 2 4; do
  mpi $p "$eellm" train --model $model --data "$tmp/train.bin" --train "$tmp/pp$p.txtpb" --out "$tmp/pp$p" --steps 3 > "$tmp/pp$p.log" 2>&1
  status=$?
  check "P=$p run exits 0" '[ $status -eq 0 ]'
  close "$tmp/single" "$tmp/pp$p" > "$tmp/close$p" 2>&1
  status=$?
  check "P=$p losses equal the single process's ($(cat "$tmp/close$p"))" '[ $status -eq 0 ]'
done

# A wrong rank count: a clear error from rank 0, every rank out within seconds.
start=$(date +%s)
mpi 3 "$eellm" train --model $model --data "$tmp/train.bin" --train "$tmp/pp2.txtpb" --out "$tmp/wrong" > "$tmp/wrong.log" 2>&1
status=$?
took=$(( $(date +%s) - start ))
check "wrong rank count fails (status $status)" '[ $status -ne 0 ] && [ $status -ne 124 ]'
check "wrong rank count fails within seconds ($took s)" '[ $took -lt 30 ]'
check "wrong rank count says so once" '[ "$(grep -c "parallelism pp 2 x tp 1 x dp 1 needs 2 ranks, mpirun started 3" "$tmp/wrong.log")" -eq 1 ]'
train --train "$tmp/pp2.txtpb" --out "$tmp/nompi" > "$tmp/nompi.log" 2>&1
status=$?
check "pp 2 without mpirun says how to start it" '[ $status -eq 2 ] && grep -q "start it with mpirun -np 2" "$tmp/nompi.log"'

# Checkpoints cross over: pipelined -> single process, and back.
train --train "$tmp/pp1.txtpb" --out "$tmp/single5" > /dev/null 2>&1
cp -r "$tmp/pp2" "$tmp/from-pp2"
resumed "P=2 checkpoint resumed in one process" "$tmp/single5" "$tmp/from-pp2" \
  train --train "$tmp/pp1.txtpb" --out "$tmp/from-pp2" --resume
cp -r "$tmp/single" "$tmp/from-single"
resumed "single-process checkpoint resumed on 4 ranks" "$tmp/single5" "$tmp/from-single" \
  mpi 4 "$eellm" train --model $model --data "$tmp/train.bin" --train "$tmp/pp4.txtpb" --out "$tmp/from-single" --resume

# An MLP exit reading its layer's ln_2 (mlp_input: LAYER_NORM_OUTPUT), PRE so it
# runs on the next layer's stage: that ln_2's gradient from the exit crosses
# stages as a shadow gradient; with dynamic_weight too, P=2 matches one process.
sed 's/placement: PRE structure: MLP /placement: PRE structure: MLP mlp_input: LAYER_NORM_OUTPUT dynamic_weight: true /' \
  $model > "$tmp/shared.txtpb"
"$eellm" train --model "$tmp/shared.txtpb" --data "$tmp/train.bin" --train "$tmp/pp1.txtpb" --out "$tmp/shared1" --steps 3 > /dev/null 2>&1
status=$?
check "shared ln_2 exit, single process" '[ $status -eq 0 ] && grep -q LAYER_NORM_OUTPUT "$tmp/shared.txtpb"'
mpi 2 "$eellm" train --model "$tmp/shared.txtpb" --data "$tmp/train.bin" --train "$tmp/pp2.txtpb" --out "$tmp/shared2" --steps 3 > "$tmp/shared2.log" 2>&1
status=$?
check "shared ln_2 exit, P=2 run exits 0" '[ $status -eq 0 ]'
close "$tmp/shared1" "$tmp/shared2" > "$tmp/closeshared" 2>&1
status=$?
check "shared ln_2 exit, P=2 losses equal the single process's ($(cat "$tmp/closeshared"))" '[ $status -eq 0 ]'

finish pipeline_mpi
