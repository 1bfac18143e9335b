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
