#!/usr/bin/env bash
# One rank of a 2-rank pipeline killed (kill -9) mid-training: the whole job
# ends non-zero within seconds, no rank left behind, and the run's checkpoint
# still resumes (its stale temporary file, if any, removed).
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 EELLM_STARPU_HOME="$tmp/starpu"

model=tests/specs/pipe.txtpb
byte_corpus 3 80
{ grep -v '^steps:' tests/specs/pipe.train.txtpb; echo "steps: 100000"; echo "parallelism { pp: 2 }"; } > "$tmp/long.txtpb"
{ grep -v '^steps:' tests/specs/pipe.train.txtpb; echo "parallelism { pp: 2 }"; } > "$tmp/pp2.txtpb"

# The pid of the eellm process of rank $2 among mpirun $1's children.
rank_pid() {
  local p
  for p in $(pgrep -P "$1"); do
    tr '\0' '\n' < "/proc/$p/environ" 2> /dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" && { echo "$p"; return; }
  done
}

for victim in 1 0; do
  out="$tmp/run$victim"
  timeout 120 scripts/eellm-mpirun 2 "$eellm" train --model $model --data "$tmp/train.bin" \
    --train "$tmp/long.txtpb" --out "$out" > "$out.log" 2>&1 &
  job=$!
  # timeout's child is mpirun; wait until the run has checkpointed at least once.
  for _ in $(seq 1 600); do [ -s "$out/checkpoint.safetensors" ] && break; sleep 0.05; done
  mpirun_pid=$(pgrep -P $job -x mpirun)
  pid=$(rank_pid "$mpirun_pid" $victim)
  ranks=$(pgrep -P "$mpirun_pid" | tr '\n' ' ')
  start=$(date +%s%N)
  kill -KILL "$pid"
  wait $job
  status=$?
  took=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "rank $victim killed: the job ended in $took ms, status $status"
  check "rank $victim killed: the job fails (status $status)" '[ $status -ne 0 ] && [ $status -ne 124 ]'
  check "rank $victim killed: the job ends within seconds ($took ms)" '[ $took -lt 20000 ]'
  # Gone, or a zombie (the container's init may never reap it): not running.
  # mpirun may return while a rank it signalled is still exiting: allow 10 s.
  for _ in $(seq 1 100); do
    left=0
    for p in $ranks; do
      state=$(awk '/^State:/ { print $2 }' "/proc/$p/status" 2> /dev/null)
      [ -n "$state" ] && [ "$state" != Z ] && left=$((left + 1))
    done
    [ $left -eq 0 ] && break
    sleep 0.1
  done
  check "rank $victim killed: no rank left running" '[ $left -eq 0 ]'
done

# The checkpoint that the killed job left resumes on 2 ranks.
cp "$tmp/run1/checkpoint.safetensors" "$tmp/ckpt-before"
timeout 120 scripts/eellm-mpirun 2 "$eellm" train --data "$tmp/train.bin" --train "$tmp/pp2.txtpb" \
  --out "$tmp/run1" --resume --steps $(( $(/usr/bin/python3 tests/st_tool.py meta "$tmp/run1/checkpoint.safetensors" step) + 2 )) \
  > "$tmp/resume.log" 2>&1
status=$?
check "the killed job's checkpoint resumes on 2 ranks (status $status)" '[ $status -eq 0 ]'
check "no temporary checkpoint left" '[ -z "$(ls "$tmp/run1" | grep "\.tmp\.")" ]'

finish fault_mpi
