#!/usr/bin/env bash
# eellm train end to end on a tiny model and corpus: training lowers the loss,
# a run stopped and resumed (by --steps or by SIGINT) reproduces the
# uninterrupted run's losses bit for bit, a failed checkpoint write leaves the
# previous checkpoint intact, EE-Tuning leaves the backbone untouched, and bad
# input gets one line, a non-zero status and nothing overwritten.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 STARPU_NCPU=${STARPU_NCPU:-2}

model=tests/specs/tiny.txtpb
train=tests/specs/tiny.train.txtpb
# A small corpus with structure a model can learn: repeated sentences.
byte_corpus 6 60 0.2
check "tokenize" '[ -s "$tmp/train.bin" ] && [ -s "$tmp/val.bin" ]'

run() { "$eellm" train --model $model --train $train --data "$tmp/train.bin" --val "$tmp/val.bin" "$@"; }
losses() { sed 's/.*"loss": \(\[[^]]*\]\).*/\1/' "$1/metrics.jsonl"; }

# The uninterrupted run.
run --out "$tmp/full" > "$tmp/full.log" 2>&1
status=$?
check "full run exits 0" '[ $status -eq 0 ]'
check "8 metric lines" '[ "$(wc -l < "$tmp/full/metrics.jsonl")" -eq 8 ]'
check "validation lines" 'grep -q "^validation at step 8" "$tmp/full.log"'
first=$(head -1 "$tmp/full/metrics.jsonl" | sed 's/.*"loss": \[[^]]*, \([0-9.]*\)\].*/\1/')
last=$(tail -1 "$tmp/full/metrics.jsonl" | sed 's/.*"loss": \[[^]]*, \([0-9.]*\)\].*/\1/')
check "final-head loss falls ($first -> $last)" 'awk -v a="$first" -v b="$last" "BEGIN { exit !(b < a - 0.5) }"'

# Stopped at step 5 (checkpoint at 3), resumed: the same losses, bit for bit.
run --out "$tmp/split" --steps 5 > /dev/null 2>&1
run --out "$tmp/split" --resume > "$tmp/resume.log" 2>&1
status=$?
check "resume exits 0" '[ $status -eq 0 ]'
check "resume says where it starts" 'grep -q "resuming .* at step 6" "$tmp/resume.log"'
check "resumed losses equal the uninterrupted run" 'cmp -s <(losses "$tmp/full") <(losses "$tmp/split")'

# SIGINT: a checkpoint, exit 0, and resuming reproduces the uninterrupted run.
cat > "$tmp/long.train.txtpb" <<EOT
$(grep -v '^steps:' $train)
steps: 400
EOT
long() { "$eellm" train --model $model --train "$tmp/long.train.txtpb" --data "$tmp/train.bin" "$@"; }
"$eellm" train --model $model --train "$tmp/long.train.txtpb" --data "$tmp/train.bin" --out "$tmp/long-b" > "$tmp/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do [ -s "$tmp/long-b/metrics.jsonl" ] && break; sleep 0.05; done
kill -INT $pid
wait $pid
status=$?
check "SIGINT exits 0 (got $status)" '[ $status -eq 0 ]'
check "SIGINT says it wrote a checkpoint" 'grep -q "^interrupted after step" "$tmp/int.log"'
stopped=$(wc -l < "$tmp/long-b/metrics.jsonl")
long --out "$tmp/long-b" --resume --steps $((stopped + 4)) > /dev/null 2>&1
long --out "$tmp/long-a" --steps $((stopped + 4)) > /dev/null 2>&1
check "interrupted after step $stopped, resumed: same losses as uninterrupted" 'cmp -s <(losses "$tmp/long-a") <(losses "$tmp/long-b")'

# A checkpoint write that fails (file size limit) leaves the previous one intact.
cp "$tmp/split/checkpoint.safetensors" "$tmp/before.safetensors"
run --out "$tmp/split-fsize" --steps 3 > /dev/null 2>&1
cp "$tmp/split-fsize/checkpoint.safetensors" "$tmp/fsize-before.safetensors"
(ulimit -f 64; run --out "$tmp/split-fsize" --resume --steps 6 > /dev/null 2> "$tmp/fsize.err")
check "failed checkpoint write says so" 'grep -q "checkpoint.safetensors" "$tmp/fsize.err"'
check "previous checkpoint intact after a failed write" 'cmp -s "$tmp/split-fsize/checkpoint.safetensors" "$tmp/fsize-before.safetensors"'
check "no temporary file left" '[ -z "$(ls "$tmp/split-fsize" | grep -v "^checkpoint.safetensors$\|^metrics.jsonl$\|^model.txtpb$")" ]'

# EE-Tuning: add an exit to the trained model, train only exits.
"$eellm" convert add-exits --ckpt "$tmp/full/checkpoint.safetensors" --exits 3 --structure norm --init copy --out "$tmp/grown.safetensors" > /dev/null
check "add-exits writes a checkpoint" '[ -s "$tmp/grown.safetensors" ]'
"$eellm" train --init "$tmp/grown.safetensors" --train $train --data "$tmp/train.bin" --out "$tmp/tuned" --tune-exits --steps 3 > "$tmp/tune.log" 2>&1
status=$?
check "tune-exits run exits 0" '[ $status -eq 0 ]'
/usr/bin/python3 - "$tmp/grown.safetensors" "$tmp/tuned/checkpoint.safetensors" > "$tmp/tune.check" 2>&1 <<'EOT'
import sys
sys.path.insert(0, "tests")
import numpy as np
from torch_parity import read_safetensors
before, _ = read_safetensors(sys.argv[1])
after, _ = read_safetensors(sys.argv[2])
frozen = [n for n in before if not n.startswith("exits.")]
moved = [n for n in before if n.startswith("exits.")]
assert all(np.array_equal(before[n], after[n]) for n in frozen), "backbone changed"
assert any(not np.array_equal(before[n], after[n]) for n in moved), "exits did not train"
assert np.array_equal(before["exits.2.ln_f.weight"], before["transformer.ln_f.weight"]), "copy init"
print("ok")
EOT
check "tune-exits trains exits only; copy init from the final head" 'grep -q "^ok" "$tmp/tune.check"'

# Bad input: one line on stderr, status 2, nothing overwritten.
: > "$tmp/empty.bin"
expect_error "empty token file" "empty\.bin" "$eellm" train --model $model --train $train --data "$tmp/empty.bin" --out "$tmp/x1"
head -c 100 "$tmp/train.bin" > "$tmp/truncated.bin"
expect_error "truncated token file" "truncated\.bin" "$eellm" train --model $model --train $train --data "$tmp/truncated.bin" --out "$tmp/x2"
printf 'hi' > "$tmp/short.txt"
"$eellm" tokenize --tokenizer byte "$tmp/short.txt" -o "$tmp/short.bin" > /dev/null
expect_error "data shorter than a sequence" "short\.bin: .*shorter than one sequence" "$eellm" train --model $model --train $train --data "$tmp/short.bin" --out "$tmp/x3"
sed 's/vocab_size: 257/vocab_size: 200/' $model > "$tmp/small-vocab.txtpb"
expect_error "token id >= vocab" "train\.bin: .*(vocabulary|vocab)" "$eellm" train --model "$tmp/small-vocab.txtpb" --train $train --data "$tmp/train.bin" --out "$tmp/x4"
sed 's/d_model: 32/d_model: 16/' $model > "$tmp/other.txtpb"
cp "$tmp/full/checkpoint.safetensors" "$tmp/full-ckpt-copy"
expect_error "checkpoint spec differs" "differs from .*other\.txtpb in field 'd_model'" "$eellm" train --model "$tmp/other.txtpb" --train $train --data "$tmp/train.bin" --out "$tmp/full" --resume
expect_error "existing run without --resume" "already holds a run" "$eellm" train --model $model --train $train --data "$tmp/train.bin" --out "$tmp/full"
check "nothing overwritten" 'cmp -s "$tmp/full/checkpoint.safetensors" "$tmp/full-ckpt-copy"'
expect_error "unwritable --out" "/proc/eellm: cannot create" "$eellm" train --model $model --train $train --data "$tmp/train.bin" --out /proc/eellm

finish train_cli
