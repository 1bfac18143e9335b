# Shared by the scripted tests (sourced): a scratch directory removed at exit,
# pass/fail counters, and the closing "NAME: N passed, N failed" line.
tmp=$(mktemp -d)
# A test that starts a server keeps its pid in $server: it dies with the test.
server=""
trap '[ -n "$server" ] && kill -KILL "$server" 2> /dev/null; rm -rf "$tmp"' EXIT
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
# check NAME EXPRESSION (one argument, evaluated) or check NAME COMMAND ARGS...:
# passes when it succeeds. Capture a command's status in a variable first:
# $? is gone by the time check runs.
check() {
  local name=$1
  shift
  if { [ $# -eq 1 ] && eval "$1"; } || { [ $# -gt 1 ] && "$@"; }; then pass; else fail "$name"; fi
}
# finish NAME: the closing line; the script's status.
finish() {
  echo "$1: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
# expect_error NAME PATTERN COMMAND...: the command fails cleanly: status 2 and
# one line on stderr matching PATTERN (grep -E). Its stderr stays in $tmp/stderr.
expect_error() {
  local name=$1 pattern=$2
  shift 2
  "$@" > /dev/null 2> "$tmp/stderr"
  local status=$?
  if [ "$status" -eq 2 ] && [ "$(wc -l < "$tmp/stderr")" -eq 1 ] &&
     grep -Eq -- "$pattern" "$tmp/stderr"; then
    pass
  else
    fail "$name: status $status, stderr: $(cat "$tmp/stderr")"
  fi
}
# byte_corpus DOCS LINES [VAL_FRACTION]: a small corpus of repeated sentences,
# byte-tokenized by $eellm into $tmp/train.bin (and, with a fraction, the last
# documents into $tmp/val.bin).
byte_corpus() {
  mkdir -p "$tmp/corpus"
  local d i
  for d in $(seq 1 "$1"); do
    for i in $(seq 1 "$2"); do echo "the quick brown fox $d jumps over the lazy dog number $i."; done \
      > "$tmp/corpus/doc$d.txt"
  done
  local val=()
  [ -n "${3:-}" ] && val=(--val-out "$tmp/val.bin" --val-fraction "$3")
  "$eellm" tokenize --tokenizer byte "$tmp/corpus" -o "$tmp/train.bin" "${val[@]}" > /dev/null
}
# close A B: the per-exit losses of two runs agree to 1e-5 relative, step by step.
close() {
  /usr/bin/python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'EOT'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert [x["step"] for x in a] == [x["step"] for x in b], "different steps"
worst = max(abs(x - y) / abs(y) for la, lb in zip(a, b) for x, y in zip(la["loss"], lb["loss"]))
print(f"max relative loss difference {worst:.2e}")
sys.exit(0 if worst <= 1e-5 else 1)
EOT
}
# resumed NAME REFERENCE OUT COMMAND...: COMMAND (resuming the run in OUT) exits
# 0, and OUT's losses then follow those of the run in REFERENCE (close).
resumed() {
  local name=$1 reference=$2 out=$3
  shift 3
  "$@" > /dev/null 2>&1
  local status=$?
  check "$name" '[ $status -eq 0 ]'
  close "$reference" "$out" > "$tmp/resumed" 2>&1
  status=$?
  check "$name: the losses continue the reference run's ($(cat "$tmp/resumed"))" '[ $status -eq 0 ]'
}

# server_port OUT SECONDS: the port that the server started in the background
# ($server) says in OUT it listens on, within SECONDS; empty if it exits first.
server_port() {
  local found=""
  for _ in $(seq 1 $(( $2 * 20 ))); do
    found=$(sed -n 's|.*http://127\.0\.0\.1:\([0-9]*\)/api.*|\1|p' "$1")
    [ -n "$found" ] || ! kill -0 "$server" 2> /dev/null && break
    sleep 0.05
  done
  echo "$found"
}

# For the parallel training tests (data_parallel_mpi.sh, tensor_parallel_mpi.sh),
# with $eellm and a corpus in $tmp/train.bin.
# parallel_models: $tmp/gpt.txtpb (learned positions, GELU) and $tmp/llama.txtpb
# (RoPE, SwiGLU, RMSNorm) from tests/specs/pipe.txtpb: a tied NORM exit on
# stage 0 and an untied MLP exit that runs on stage 1 at pp 2. No biases:
# attention's key bias gets a gradient that is zero in exact arithmetic
# (softmax ignores a shift shared by a query's scores), so what AdamW makes of
# its rounding noise differs with the order of any sum, in one process too.
parallel_models() {
  { cat tests/specs/pipe.txtpb; echo "bias: false"; } > "$tmp/gpt.txtpb"
  { cat tests/specs/pipe.txtpb; echo "bias: false positions: ROPE activation: SWIGLU norm: RMSNORM"; } \
    > "$tmp/llama.txtpb"
}
train() { "$eellm" train --data "$tmp/train.bin" "$@"; }
mpi() { timeout 400 scripts/eellm-mpirun "$@"; }
weights() { /usr/bin/python3 tests/st_tool.py close "$1/checkpoint.safetensors" "$2/checkpoint.safetensors" 1e-5; }
# single_runs: each model's 3-step single-process run, $tmp/MODEL-1, under $tmp/single.train.txtpb.
single_runs() {
  local model status
  for model in gpt llama; do
    train --model "$tmp/$model.txtpb" --train "$tmp/single.train.txtpb" --out "$tmp/$model-1" --steps 3 > /dev/null 2>&1
    status=$?
    check "$model: single-process run" '[ $status -eq 0 ]'
  done
}
# parallel_run NAME MODEL LAYOUT RANKS: a 3-step run under $tmp/LAYOUT.train.txtpb on
# RANKS ranks whose losses, weights and moments equal MODEL's single-process run's.
parallel_run() {
  local status
  mpi "$4" "$eellm" train --model "$tmp/$2.txtpb" --data "$tmp/train.bin" --train "$tmp/$3.train.txtpb" \
    --out "$tmp/$1" --steps 3 > "$tmp/$1.log" 2>&1
  status=$?
  check "$1: exits 0 ($(grep -m1 -i error "$tmp/$1.log"))" '[ $status -eq 0 ]'
  close "$tmp/$2-1" "$tmp/$1" > "$tmp/$1.close" 2>&1
  status=$?
  check "$1: losses equal the single process's ($(cat "$tmp/$1.close"))" '[ $status -eq 0 ]'
  weights "$tmp/$2-1" "$tmp/$1" > "$tmp/$1.weights" 2>&1
  status=$?
  check "$1: weights and moments equal the single process's ($(cat "$tmp/$1.weights"))" '[ $status -eq 0 ]'
}
# resumed_at OUT MODEL FROM LAYOUT RANKS DESCRIPTION: run $tmp/FROM (checkpoint at step 3)
# copied to $tmp/OUT and resumed to step 5 under $tmp/LAYOUT.train.txtpb on RANKS ranks (1:
# one process) continues $tmp/MODEL-5, the 5-step single-process run: its losses, and
# its final weights and moments.
resumed_at() {
  local out="$tmp/$1" run=(train --model "$tmp/$2.txtpb" --train "$tmp/$4.train.txtpb" --out "$tmp/$1" --resume)
  cp -r "$tmp/$3" "$out"
  [ "$5" -gt 1 ] && run=(mpi "$5" "$eellm" train --data "$tmp/train.bin" "${run[@]:1}")
  resumed "$6" "$tmp/$2-5" "$out" "${run[@]}"
  weights "$tmp/$2-5" "$out" > "$tmp/$1.weights" 2>&1
  local status=$?
  check "$6: and its final weights and moments ($(cat "$tmp/$1.weights"))" '[ $status -eq 0 ]'
}
