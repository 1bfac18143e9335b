#!/usr/bin/env bash
# SIGKILL at random moments of `eellm train` (start-up, steps, checkpoint
# writes, resumes) and deterministically inside a checkpoint write
# (EELLM_FAULT_KILL_IN_WRITE): every kill leaves a checkpoint that loads (or
# none yet), the run resumed to its end has the uninterrupted run's losses
# byte for byte, and no temporary checkpoint file outlives the resume.
# FAULT_TRIALS (default 12) sets the number of randomly killed runs.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 STARPU_NCPU=${STARPU_NCPU:-2}
trials=${FAULT_TRIALS:-12}

model=tests/specs/tiny.txtpb
byte_corpus 6 60
# 100 short steps, a checkpoint every other step: kills land in writes often.
{ grep -v '^steps:\|^checkpoint_interval:\|^eval_interval:' tests/specs/tiny.train.txtpb
  echo "steps: 100"; echo "checkpoint_interval: 2"; echo "eval_interval: 0"; } > "$tmp/kill.txtpb"
train() { "$eellm" train --model $model --train "$tmp/kill.txtpb" --data "$tmp/train.bin" --out "$@"; }
losses() { sed 's/.*"loss": \(\[[^]]*\]\).*/\1/' "$1/metrics.jsonl"; }
temps() { ls "$1" | grep -c '\.tmp\.'; }

start=$(date +%s%N)
train "$tmp/ref" > /dev/null 2>&1
status=$?
run_ms=$(( ($(date +%s%N) - start) / 1000000 ))
check "uninterrupted run exits 0 ($run_ms ms)" '[ $status -eq 0 ] && [ "$(wc -l < "$tmp/ref/metrics.jsonl")" -eq 100 ]'

# resume_to_end DIR: continues the run in DIR (or starts it, if no checkpoint
# survived), unkilled; 0 when it ends with the reference losses and no temp file.
resume_to_end() {
  local resume=()
  [ -e "$1/checkpoint.safetensors" ] && resume=(--resume)
  train "$1" "${resume[@]}" > "$1.log" 2>&1 || { echo "  resume failed: $(tail -1 "$1.log")"; return 1; }
  cmp -s <(losses "$tmp/ref") <(losses "$1") || { echo "  losses differ"; return 1; }
  [ "$(temps "$1")" -eq 0 ] || { echo "  temporary files left: $(ls "$1")"; return 1; }
}

# Random kills: each trial is killed twice at random moments (the second time
# while resuming), then resumed to its end.
survived=0 kills=0 in_write=0
for t in $(seq 1 "$trials"); do
  dir="$tmp/trial$t"
  ok=1
  for k in 1 2; do
    resume=()
    [ -e "$dir/checkpoint.safetensors" ] && resume=(--resume)
    # Not through the function: $! must be eellm itself, not a subshell.
    "$eellm" train --model $model --train "$tmp/kill.txtpb" --data "$tmp/train.bin" --out "$dir" \
      "${resume[@]}" > /dev/null 2>&1 &
    pid=$!
    delay=$(( RANDOM * (run_ms + 200) / 32768 ))
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    kill -KILL $pid 2> /dev/null && kills=$((kills + 1))
    wait $pid 2> /dev/null
    [ -d "$dir" ] && [ "$(temps "$dir")" -gt 0 ] && in_write=$((in_write + 1))
  done
  resume_to_end "$dir" || ok=0
  [ $ok -eq 1 ] && survived=$((survived + 1)) || echo "  trial $t failed"
done
echo "random SIGKILL: tried $trials, survived $survived ($kills kills, $in_write left a temporary file)"
check "random SIGKILL: tried $trials, survived $survived" '[ $survived -eq $trials ]'

# Deterministic: killed inside the 1st, 2nd and 10th checkpoint write, half-way
# through the data; the temporary file stays until the resume clears it.
det=0 det_ok=0
for k in 1 2 10; do
  dir="$tmp/write$k"
  det=$((det + 1))
  EELLM_FAULT_KILL_IN_WRITE=$k train "$dir" > /dev/null 2>&1
  status=$?
  ok=1
  [ $status -eq 137 ] || { echo "  write $k: status $status, not killed"; ok=0; }
  [ "$(temps "$dir")" -eq 1 ] || { echo "  write $k: no temporary file left"; ok=0; }
  if [ $k -eq 1 ]; then
    [ ! -e "$dir/checkpoint.safetensors" ] || { echo "  write 1: a checkpoint appeared"; ok=0; }
  else
    [ "$(/usr/bin/python3 tests/st_tool.py meta "$dir/checkpoint.safetensors" step)" = $((2 * (k - 1))) ] ||
      { echo "  write $k: the previous checkpoint (step $((2 * (k - 1)))) is not the one there"; ok=0; }
  fi
  resume_to_end "$dir" || ok=0
  [ $ok -eq 1 ] && det_ok=$((det_ok + 1))
done
echo "SIGKILL inside a checkpoint write: tried $det, survived $det_ok"
check "SIGKILL inside a checkpoint write: tried $det, survived $det_ok" '[ $det_ok -eq $det ]'

# A live process's temporary file is not touched by another run's clean-up.
sleep 30 &
live=$!
cp "$tmp/ref/checkpoint.safetensors" "$tmp/write1/checkpoint.safetensors.tmp.$live.0"
train "$tmp/write1" --resume > /dev/null 2>&1
check "a live process's temporary file is kept" '[ -e "$tmp/write1/checkpoint.safetensors.tmp.$live.0" ]'
kill $live
wait $live 2> /dev/null
train "$tmp/write1" --resume > /dev/null 2>&1
check "and removed once that process is gone" '[ "$(temps "$tmp/write1")" -eq 0 ]'

finish fault_kill
