#!/usr/bin/env bash
# Generation across MPI ranks (mpirun --oversubscribe on loopback), one
# pipeline stage per rank or per tensor-parallel pair of ranks (--tp 2): on a
# 4-layer model with a tied NORM exit, a PRE-placed MLP exit that lives on the
# next stage and a BLOCK exit, 2 and 4 ranks, (pp, tp) = (1, 2) and (2, 2)
# give the single process's tokens and exit layers (--stages 2 and --stages
# 1), greedy with exits off and with exits firing often, sampled too, under
# --method pipeline and recompute, for a batch of two prompts; the same output
# (logprobs within 0.002 under --tp, whose row-parallel sums round otherwise).
# Layouts that do not fit are refused with one line; eellm serve under mpirun
# answers with the single process's tokens.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 EELLM_STARPU_HOME="$tmp/starpu"

byte_corpus 1 80
"$eellm" train --model tests/specs/pipe.txtpb --train tests/specs/confident.train.txtpb \
  --data "$tmp/train.bin" --out "$tmp/run" > /dev/null 2>&1
check "a checkpoint to generate from" '[ -s "$tmp/run/checkpoint.safetensors" ]'
sed 's/^d_model: .*/d_model: 24/; s/^n_heads: .*/n_heads: 3/' tests/specs/pipe.txtpb > "$tmp/heads3.txtpb"
"$eellm" train --model "$tmp/heads3.txtpb" --train tests/specs/confident.train.txtpb \
  --data "$tmp/train.bin" --out "$tmp/heads3" --steps 1 > /dev/null 2>&1

args=(generate --ckpt "$tmp/run" --prompt "the quick" --prompt "over the" --max-tokens 14 --show-exits)
# exits FILE: the exit tables (token, exit layer, logprob, text) of the output.
exits() { grep -E '^ +[0-9]+ +[0-9]' "$1"; }
# An exit table's line without its logprob, the first number with decimals.
no_logprob='s/-?[0-9]+\.[0-9]{3}//'
# steady FILE: the output but for the speed and the stages.
steady() { grep -vE '^(mean exit layer|pipeline stages:)' "$1"; }
# agree FILE1 FILE2: the same lines but for numbers with 3 decimals (logprobs),
# which may differ by 0.002: tensor parallelism sums each row-parallel product
# from its parts, rounding otherwise than one process.
agree() {
  awk 'function masked(line, values,   n) {
         n = 0
         while (match(line, /-?[0-9]+\.[0-9][0-9][0-9]/)) {
           values[++n] = substr(line, RSTART, RLENGTH)
           line = substr(line, 1, RSTART - 1) "#" substr(line, RSTART + RLENGTH)
         }
         values[0] = n
         return line
       }
       NR == FNR { first[FNR] = $0; lines = FNR; next }
       { if (masked(first[FNR], a) != masked($0, b) || a[0] != b[0]) bad = 1
         for (i = 1; i <= a[0]; i++) if (a[i] - b[i] > 0.002 || b[i] - a[i] > 0.002) bad = 1 }
       END { exit bad || FNR != lines }' <(steady "$1") <(steady "$2")
}
# same NAME OPTIONS...: one process with --stages 1 and 2, then 2 and 4 ranks,
# give the same tokens and exit layers (and, but under --tp, the same logprobs).
same() {
  local name=$1
  shift
  STARPU_NCPU=1 "$eellm" "${args[@]}" --stages 1 "$@" > "$tmp/one" 2> "$tmp/one.err"
  local status=$?
  check "$name: one process exits 0" '[ $status -eq 0 ] && [ "$(exits "$tmp/one" | wc -l)" -eq 28 ]'
  local ran
  for ran in "--stages 2" "mpirun 2" "mpirun 4" "mpirun 2 --tp 2" "mpirun 4 --tp 2"; do
    if [ "${ran%% *}" = mpirun ]; then
      local on=${ran#* }
      # shellcheck disable=SC2086
      timeout 120 scripts/eellm-mpirun ${on%% *} "$eellm" "${args[@]}" "$@" ${on#"${on%% *}"} \
        > "$tmp/other" 2> "$tmp/other.err"
    else
      # shellcheck disable=SC2086
      STARPU_NCPU=1 "$eellm" "${args[@]}" $ran "$@" > "$tmp/other" 2> "$tmp/other.err"
    fi
    status=$?
    check "$name, $ran: exits 0 ($(head -c 300 "$tmp/other.err"))" '[ $status -eq 0 ]'
    if [ "${ran%--tp 2}" = "$ran" ]; then
      check "$name, $ran: the same output" 'diff <(steady "$tmp/one") <(steady "$tmp/other") > /dev/null'
    else
      check "$name, $ran: the same output, logprobs within 0.002" 'agree "$tmp/one" "$tmp/other"'
    fi
    check "$name, $ran: the same tokens and exit layers" \
      'diff <(exits "$tmp/one" | sed -E "$no_logprob") <(exits "$tmp/other" | sed -E "$no_logprob") > /dev/null'
  done
}
same "pipeline, exits off" --method pipeline --threshold 1
same "pipeline, exits at 0.6" --method pipeline --threshold 0.6
same "recompute, exits at 0.6" --method recompute --threshold 0.6
same "pipeline, sampled, exits at 0.6" --method pipeline --threshold 0.6 --temperature 0.8 --seed 3
check "exits fired at 0.6" 'exits "$tmp/one" | awk "\$2 < 4 { n++ } END { exit !(n > 2) }"'
check "one copy of the output under mpirun" '[ "$(grep -c "^==> prompt 1" "$tmp/other")" -eq 1 ]'

# refused NAME RANKS PATTERN ARGS...: eellm ARGS on RANKS ranks says one line
# matching PATTERN, and every rank is out within seconds, non-zero.
refused() {
  local name=$1 ranks=$2 pattern=$3
  shift 3
  local start
  start=$(date +%s)
  timeout 120 scripts/eellm-mpirun "$ranks" "$eellm" "$@" > /dev/null 2> "$tmp/refused"
  local status=$? took=$(( $(date +%s) - start ))
  check "$name: refused (status $status) within seconds ($took s)" \
    '[ $status -ne 0 ] && [ $status -ne 124 ] && [ $took -lt 60 ]'
  check "$name: one line ($(grep eellm "$tmp/refused" | head -c 300))" \
    '[ "$(grep -c eellm "$tmp/refused")" -eq 1 ] && grep -Eq -- "$pattern" "$tmp/refused"'
}
refused "--stages 3 on 2 ranks" 2 "^eellm generate: 3 stages on 2 ranks: under MPI each rank is one stage$" \
  "${args[@]}" --method pipeline --stages 3
refused "speculative on 2 ranks" 2 "^eellm generate: speculative generation runs in one process, not on 2 ranks$" \
  "${args[@]}" --method speculative --draft-exit 1
refused "--tp 2 on 3 ranks" 3 "^eellm generate: 2 tensor-parallel ranks do not divide the 3 ranks$" \
  "${args[@]}" --tp 2
refused "--tp 2 for 3 heads" 2 "^eellm generate: parallelism.tp 2 does not divide n_heads 3$" \
  generate --ckpt "$tmp/heads3" --prompt "the" --tp 2
refused "5 ranks for 4 layers" 5 "^eellm generate: 5 pipeline stages for 4 layers" "${args[@]}" --method pipeline
refused "--bf16-heads on 2 ranks" 2 "^eellm generate: bf16 heads run in one process \(this run has 2 ranks\)$" \
  "${args[@]}" --bf16-heads

# eellm serve across ranks: rank 0 serves, the others replay its sessions. Two
# concurrent requests get the single process's tokens and exit layers, by
# recompute and pipeline; the server stops on SIGTERM to mpirun within seconds.
STARPU_NCPU=1 "$eellm" "${args[@]}" --stages 1 --method pipeline --threshold 0.6 > "$tmp/one" 2>&1
# served FILE: a JSON answer's texts and exit layers as lines.
served() { /usr/bin/python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["text"]); print(d["exit_layers"])' "$1"; }
request='{"prompts": ["the quick", "over the"], "tokens_to_generate": 14, "temperature": 0, "use_early_exit": true, "early_exit_thres": 0.6'
for layout in "2" "4 --tp 2"; do
  # shellcheck disable=SC2086
  timeout 300 scripts/eellm-mpirun ${layout%% *} "$eellm" serve --ckpt "$tmp/run" --port 0 ${layout#"${layout%% *}"} \
    > "$tmp/serve.out" 2> "$tmp/serve.err" &
  server=$!
  port=$(server_port "$tmp/serve.out" 60)
  check "serve on mpirun $layout: listens ($(head -c 300 "$tmp/serve.err"))" '[ -n "$port" ]'
  for method in recompute pipeline; do
    clients=()
    for i in 1 2; do
      curl -s --max-time 60 -X PUT "http://127.0.0.1:$port/api" -d "$request, \"method\": \"$method\"}" \
        > "$tmp/answer$i" &
      clients+=($!)
    done
    wait "${clients[@]}"
    for i in 1 2; do
      served "$tmp/answer$i" > "$tmp/served$i" 2>&1
      status=$?
      check "serve on mpirun $layout, $method, request $i: answered ($(head -c 200 "$tmp/answer$i"))" '[ $status -eq 0 ]'
      check "serve on mpirun $layout, $method, request $i: the single process's tokens and exit layers" \
        "diff <(exits '$tmp/one' | awk '{ print \$2 }') <(/usr/bin/python3 -c 'import json, sys; [print(l) for s in json.load(open(sys.argv[1]))[\"exit_layers\"] for l in s]' '$tmp/answer$i') > /dev/null"
    done
  done
  start=$(date +%s)
  kill -TERM $server
  wait $server 2> /dev/null
  status=$?
  took=$(( $(date +%s) - start ))
  check "serve on mpirun $layout: stops on SIGTERM (status $status, $took s)" '[ $took -lt 30 ]'
  server=""
done

finish generate_mpi
