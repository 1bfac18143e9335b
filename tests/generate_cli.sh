#!/usr/bin/env bash
# eellm generate end to end on a tiny model trained for a few steps: a run
# directory or a checkpoint file, the exits table and summary, streaming gives
# the same text, several prompts (flags or a file) form one batch, both methods
# agree, speculative decoding gives the full model's tokens, sampling is
# reproducible, and bad input gets one line and status 2.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 STARPU_NCPU=${STARPU_NCPU:-2}

mkdir "$tmp/corpus"
for i in $(seq 1 80); do echo "the quick brown fox jumps over the lazy dog number $i."; done > "$tmp/corpus/doc.txt"
"$eellm" tokenize --tokenizer byte "$tmp/corpus" -o "$tmp/train.bin" > /dev/null
"$eellm" train --model tests/specs/tiny.txtpb --train tests/specs/confident.train.txtpb \
  --data "$tmp/train.bin" --out "$tmp/run" > /dev/null 2>&1
check "a checkpoint to generate from" '[ -s "$tmp/run/checkpoint.safetensors" ]'

gen() { "$eellm" generate --ckpt "$tmp/run" "$@"; }

gen --prompt "the quick" --max-tokens 12 > "$tmp/plain" 2> "$tmp/err"
status=$?
check "generate exits 0, nothing on stderr" '[ $status -eq 0 ] && [ ! -s "$tmp/err" ]'
check "the text starts with the prompt" 'head -c 9 "$tmp/plain" | grep -qx "the quick"'
check "12 tokens (bytes) follow the prompt" '[ "$(head -c -1 "$tmp/plain" | wc -c)" -ge 9 ]'
"$eellm" generate --ckpt "$tmp/run/checkpoint.safetensors" --prompt "the quick" --max-tokens 12 > "$tmp/file"
check "--ckpt takes the checkpoint file too" 'cmp -s "$tmp/plain" "$tmp/file"'
gen --prompt "the quick" --max-tokens 12 --stream > "$tmp/stream"
check "--stream prints the same text" 'cmp -s "$tmp/plain" "$tmp/stream"'
gen --prompt "the quick" --max-tokens 12 --bf16-heads --show-exits > "$tmp/bf16" 2> "$tmp/err"
status=$?
check "--bf16-heads: 12 tokens, nothing on stderr" \
  '[ $status -eq 0 ] && [ ! -s "$tmp/err" ] && grep -Eq "^mean exit layer [0-9.]+ of 3; 12 tokens" "$tmp/bf16"'

gen --prompt "the lazy" --max-tokens 16 --threshold 0.5 --show-exits > "$tmp/exits"
check "--show-exits: a table of tokens" 'grep -q "^  token  exit layer  logprob  text" "$tmp/exits" && [ "$(grep -c "^ *[0-9]\+ \+[0-9]" "$tmp/exits")" -eq 16 ]'
check "--show-exits: tokens per exit, some early" 'grep -Eq "^tokens per exit: layer [12] [0-9]+ \([0-9.]+%\).* layer 3 \(final\)" "$tmp/exits"'
check "--show-exits: mean exit layer and tokens/s" 'grep -Eq "^mean exit layer [0-9.]+ of 3; 16 tokens in [0-9.]+ s: [0-9.]+ tokens/s" "$tmp/exits"'
gen --prompt "the lazy" --max-tokens 16 --threshold 0.5 --method pipeline --show-exits > "$tmp/pipe"
check "pipeline: the same tokens and exits as recompute" 'cmp -s <(grep -v "^mean" "$tmp/exits") <(grep -v "^mean\|^pipeline stages" "$tmp/pipe")'
check "pipeline: stages split at the exits" 'grep -qx "pipeline stages: layer 1 | layer 2 | layer 3" "$tmp/pipe"'
gen --prompt "the lazy" --max-tokens 8 --threshold 0.5 --method pipeline --stages 3 > /dev/null
status=$?
check "--stages 3" '[ $status -eq 0 ]'
gen --prompt "the lazy" --max-tokens 8 --threshold 0.5 --exit-rule entropy --exit-layers 2 --show-exits > "$tmp/entropy"
status=$?
check "--exit-rule entropy --exit-layers 2: no token from layer 1" '[ $status -eq 0 ] && ! grep -q "^ *[0-9]\+ \+1 " "$tmp/entropy"'

# Speculative: the full model's tokens (exits off), every exit drafting.
gen --prompt "the lazy" --prompt "number 7" --max-tokens 16 --threshold 1 --show-exits > "$tmp/full"
for L in 1 2; do
  gen --prompt "the lazy" --prompt "number 7" --max-tokens 16 --method speculative --draft-exit $L --draft-tokens 3 --show-exits > "$tmp/spec$L"
  status=$?
  check "speculative, draft exit $L: the full model's tokens ($(grep -o "[0-9]* of [0-9]* drafts kept" "$tmp/spec$L"))" '[ $status -eq 0 ] && cmp -s <(grep -v "^mean\|^speculation" "$tmp/full") <(grep -v "^mean\|^speculation" "$tmp/spec$L")'
done
gen --prompt "the" --max-tokens 20 --method speculative --draft-exit 2 --temperature 0.9 --top-k 20 --seed 3 > "$tmp/ss1"
status=$?
gen --prompt "the" --max-tokens 20 --method speculative --draft-exit 2 --temperature 0.9 --top-k 20 --seed 3 > "$tmp/ss2"
check "speculative sampling with a seed is reproducible" '[ $status -eq 0 ] && [ -s "$tmp/ss1" ] && cmp -s "$tmp/ss1" "$tmp/ss2"'
check "speculative --show-exits: drafts kept" 'grep -Eq "^speculation: draft exit layer 2, [0-9]+ rounds, [0-9]+ of [0-9]+ drafts kept" "$tmp/spec2"'
expect_error "speculative without --draft-exit" "--draft-exit" "$eellm" generate --ckpt "$tmp/run" --prompt x --method speculative
expect_error "draft exit without an exit" "draft exit layer 3" "$eellm" generate --ckpt "$tmp/run" --prompt x --method speculative --draft-exit 3
expect_error "draft tokens 17" "--draft-tokens" "$eellm" generate --ckpt "$tmp/run" --prompt x --method speculative --draft-exit 1 --draft-tokens 17
expect_error "--draft-exit without speculative" "--method speculative" "$eellm" generate --ckpt "$tmp/run" --prompt x --draft-exit 1

gen --prompt "the quick" --prompt "number 7" --max-tokens 10 --threshold 0.4 > "$tmp/two"
check "two prompts: two sections" 'grep -q "^==> prompt 1 <==" "$tmp/two" && grep -q "^==> prompt 2 <==" "$tmp/two"'
printf 'the quick\n\nnumber 7\n' > "$tmp/prompts.txt"
gen --prompt-file "$tmp/prompts.txt" --max-tokens 10 --threshold 0.4 > "$tmp/two-file"
check "--prompt-file: one prompt per non-empty line" 'cmp -s "$tmp/two" "$tmp/two-file"'
gen --prompt "number 7" --max-tokens 10 --threshold 0.4 > "$tmp/second"
check "a prompt in a batch gives what it gives alone" 'cmp -s <(sed -n "/^==> prompt 2 <==/,\$p" "$tmp/two" | tail -n +2) "$tmp/second"'
gen --prompt "the quick" --prompt "number 7" --max-tokens 4 --stream > "$tmp/two-stream"
check "--stream with two prompts tags tokens" 'grep -q "^\[1\] " "$tmp/two-stream" && grep -q "^\[2\] " "$tmp/two-stream"'

gen --prompt "the" --max-tokens 20 --temperature 0.9 --top-k 20 --top-p 0.9 --seed 3 > "$tmp/s1"
gen --prompt "the" --max-tokens 20 --temperature 0.9 --top-k 20 --top-p 0.9 --seed 3 > "$tmp/s2"
check "sampling with a seed is reproducible" '[ -s "$tmp/s1" ] && cmp -s "$tmp/s1" "$tmp/s2"'
# --top-p-decay with a bound below 1 / vocabulary: every token after the first is drawn
# from a nucleus of one (log-probability 0 under the sampling distribution).
gen --prompt "the" --max-tokens 10 --threshold 1 --temperature 1 --top-p 0.95 --top-p-decay 0.001 \
  --top-p-bound 0.0001 --seed 3 --show-exits --ignore-eot > "$tmp/decay"
status=$?
check "--top-p-decay, --top-p-bound: a nucleus of one after the first token" \
  '[ $status -eq 0 ] && [ "$(grep -Ec "^ +[1-9][0-9]* +3 \(final\) +-?0\.000 " "$tmp/decay")" -eq 9 ]'
gen --prompt "a:" --max-tokens 20 --temperature 2 --seed 1 --prevent-newline-after-colon --ignore-eot \
  > "$tmp/colon"
status=$?
check "--prevent-newline-after-colon: no newline after ':'" \
  '[ $status -eq 0 ] && ! head -c -1 "$tmp/colon" | grep -q ":$"'

expect_error "no --ckpt" "--ckpt is required" "$eellm" generate --prompt x
expect_error "no prompt" "no prompt" "$eellm" generate --ckpt "$tmp/run"
expect_error "missing checkpoint" "nothing\.safetensors" "$eellm" generate --ckpt "$tmp/nothing.safetensors" --prompt x
expect_error "threshold 0" "--threshold" "$eellm" generate --ckpt "$tmp/run" --prompt x --threshold 0
expect_error "threshold 1.5" "--threshold" "$eellm" generate --ckpt "$tmp/run" --prompt x --threshold 1.5
expect_error "unknown method" "--method" "$eellm" generate --ckpt "$tmp/run" --prompt x --method fast
expect_error "exit layer without an exit" "exit layer 7" "$eellm" generate --ckpt "$tmp/run" --prompt x --threshold 0.5 --exit-layers 7
expect_error "too many stages" "stages" "$eellm" generate --ckpt "$tmp/run" --prompt x --method pipeline --stages 9
expect_error "prompt longer than the context" "context" "$eellm" generate --ckpt "$tmp/run" --prompt "$(printf 'x%.0s' $(seq 1 40))"
expect_error "top-p bound without a decay" "--top-p-bound goes with --top-p-decay" "$eellm" generate --ckpt "$tmp/run" --prompt x --top-p-bound 0.5
expect_error "top-p decay 0" "--top-p-decay" "$eellm" generate --ckpt "$tmp/run" --prompt x --top-p-decay 0
expect_error "missing prompt file" "prompts-none" "$eellm" generate --ckpt "$tmp/run" --prompt-file "$tmp/prompts-none.txt"
# --trace: every task of the generation, readable by eellm trace.
gen --prompt "the lazy" --max-tokens 8 --threshold 0.5 --method pipeline --trace "$tmp/gen.json" > /dev/null 2> "$tmp/trace.err"
status=$?
check "generate --trace exits 0" '[ $status -eq 0 ] && grep -q "^trace: [1-9][0-9]* tasks" "$tmp/trace.err"'
"$eellm" trace summary "$tmp/gen.json" > "$tmp/gen-summary" 2>&1
status=$?
check "the generation's trace reads back ($(head -1 "$tmp/gen-summary"))" '[ $status -eq 0 ] && grep -q "^exit " "$tmp/gen-summary"'

"$eellm" generate --help > "$tmp/help"
status=$?
check "--help exits 0 and describes the options" '[ $status -eq 0 ] && grep -q -- "--exit-layers" "$tmp/help"'

finish generate_cli
