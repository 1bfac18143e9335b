#!/usr/bin/env bash
# Non-finite values and damaged checkpoints: a NaN gradient norm, a loss gone
# NaN after an exploding learning rate, weights that overflow, a poisoned
# --init: each stops `eellm train` (status 1) naming the step and the value,
# keeps the last good checkpoint and leaves metrics.jsonl valid JSON;
# --skip-nonfinite skips the step (parameters and moments unchanged, bit for
# bit), counts it and resumes bit-exactly. `eellm generate` refuses a
# non-finite model, and a checkpoint whose data was damaged names the tensor
# (EELLM_NO_CHECKSUM=1 skips the check); a checkpoint without checksums loads.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 STARPU_NCPU=${STARPU_NCPU:-2}
py=/usr/bin/python3
st() { $py tests/st_tool.py "$@"; }

model=tests/specs/tiny.txtpb
train=tests/specs/tiny.train.txtpb   # 8 steps, checkpoint every 3
byte_corpus 6 60
run() { "$eellm" train --train $train --data "$tmp/train.bin" "$@"; }
losses() { sed 's/.*"loss": \(\[[^]]*\]\).*/\1/' "$1/metrics.jsonl"; }
valid_json() { $py -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1])]' "$1" 2> /dev/null; }
# expect_stop NAME PATTERN COMMAND...: status 1 and one stderr line matching PATTERN.
expect_stop() {
  local name=$1 pattern=$2
  shift 2
  "$@" > "$tmp/stdout" 2> "$tmp/stderr"
  local status=$?
  if [ $status -eq 1 ] && [ "$(wc -l < "$tmp/stderr")" -eq 1 ] && grep -Eq -- "$pattern" "$tmp/stderr"; then
    pass
  else
    fail "$name: status $status, stderr: $(cat "$tmp/stderr")"
  fi
}

run --model $model --out "$tmp/ref" > /dev/null 2>&1
status=$?
check "reference run" '[ $status -eq 0 ] && [ -s "$tmp/ref/checkpoint.safetensors" ]'

# A NaN gradient norm at step 5 (a test hook puts a NaN into one gradient).
expect_stop "NaN gradient norm stops the run" \
  "^eellm train: step 5: the gradient norm is NaN .*last good checkpoint \(step 3\) is kept.*--skip-nonfinite" \
  env EELLM_FAULT_NAN_GRAD_STEP=5 "$eellm" train --model $model --train $train --data "$tmp/train.bin" --out "$tmp/nan"
check "  its checkpoint is step 3's" '[ "$(st meta "$tmp/nan/checkpoint.safetensors" step)" = 3 ]'
check "  metrics stop at step 4, valid JSON" '[ "$(wc -l < "$tmp/nan/metrics.jsonl")" -eq 4 ] && valid_json "$tmp/nan/metrics.jsonl"'

# --skip-nonfinite: step 5 applies no update and is counted; the parameters
# and moments checkpointed after step 5 are those after step 4, bit for bit.
{ grep -v '^checkpoint_interval:' $train; echo "checkpoint_interval: 1"; } > "$tmp/every.txtpb"
EELLM_FAULT_NAN_GRAD_STEP=5 "$eellm" train --model $model --train "$tmp/every.txtpb" --data "$tmp/train.bin" \
  --out "$tmp/skip" --skip-nonfinite --steps 4 > /dev/null 2>&1
cp "$tmp/skip/checkpoint.safetensors" "$tmp/skip4.safetensors"
EELLM_FAULT_NAN_GRAD_STEP=5 "$eellm" train --train "$tmp/every.txtpb" --data "$tmp/train.bin" \
  --out "$tmp/skip" --skip-nonfinite --resume --steps 5 > "$tmp/skip.log" 2>&1
status=$?
check "--skip-nonfinite: the run goes on (status $status)" '[ $status -eq 0 ]'
check "  progress counts the skipped step" 'grep -q "^step 5/5 .*| skipped 1 (step 5: non-finite gradient norm, no update)" "$tmp/skip.log"'
check "  metrics: grad_norm null, skipped, counted; valid JSON" \
  'tail -1 "$tmp/skip/metrics.jsonl" | grep -q "\"grad_norm\": null.*\"skipped\": true, \"skipped_steps\": 1}" && valid_json "$tmp/skip/metrics.jsonl"'
check "  parameters and moments after the skipped step are step 4's, bit for bit" \
  'st same "$tmp/skip4.safetensors" "$tmp/skip/checkpoint.safetensors"'
# The skipping run, uninterrupted and interrupted after the skip: the same losses.
EELLM_FAULT_NAN_GRAD_STEP=5 run --model $model --out "$tmp/skip-a" --skip-nonfinite > "$tmp/skip-a.log" 2>&1
EELLM_FAULT_NAN_GRAD_STEP=5 run --model $model --out "$tmp/skip-b" --skip-nonfinite --steps 6 > /dev/null 2>&1
run --out "$tmp/skip-b" --skip-nonfinite --resume > "$tmp/skip-b.log" 2>&1
check "  resumed after the skip: the same losses, bit for bit" 'cmp -s <(losses "$tmp/skip-a") <(losses "$tmp/skip-b")'
check "  and the count survives the resume" 'grep -q "^step 8/8 .*| skipped 1$" "$tmp/skip-b.log" && tail -1 "$tmp/skip-b/metrics.jsonl" | grep -q "\"skipped_steps\": 1}"'

# An exploding learning rate (resumed from step 3 with lr 1e30): step 4's update
# makes the weights huge, step 5's losses NaN.
run --model $model --out "$tmp/lr" --steps 3 > /dev/null 2>&1
cp "$tmp/lr/checkpoint.safetensors" "$tmp/lr3.safetensors"
sed 's/lr: 3e-3/lr: 1e30/' $train > "$tmp/huge.txtpb"
expect_stop "exploding lr stops the run naming the exit" \
  "^eellm train: step 5: exit 0 \(layer 1\) has loss NaN; stopped: the last good checkpoint \(step 3\) is kept" \
  "$eellm" train --train "$tmp/huge.txtpb" --data "$tmp/train.bin" --out "$tmp/lr" --resume
check "  the last good checkpoint is untouched" 'cmp -s "$tmp/lr/checkpoint.safetensors" "$tmp/lr3.safetensors"'
check "  metrics stay valid JSON" 'valid_json "$tmp/lr/metrics.jsonl"'
# lr 3e38 with a checkpoint every step: step 4's update overflows to inf; the
# checkpoint due then is not written.
sed 's/lr: 3e-3/lr: 3e38/; s/checkpoint_interval: 3/checkpoint_interval: 1/' $train > "$tmp/inf.txtpb"
expect_stop "weights gone non-finite are not checkpointed" \
  "^eellm train: step 4: .*checkpoint\.safetensors: tensor '[^']*' has a non-finite value \((-?inf|NaN)\) at index [0-9]+: not written" \
  "$eellm" train --train "$tmp/inf.txtpb" --data "$tmp/train.bin" --out "$tmp/lr" --resume
check "  the last good checkpoint is untouched" 'cmp -s "$tmp/lr/checkpoint.safetensors" "$tmp/lr3.safetensors"'

# A poisoned --init: NaN at step 1, no checkpoint written.
st poison "$tmp/ref/checkpoint.safetensors" "$tmp/nan.safetensors" transformer.h.0.attn.c_attn.weight 5 nan
expect_stop "NaN weights from --init stop step 1" \
  "^eellm train: step 1: exit 0 \(layer 1\) has loss NaN; stopped: no checkpoint written" \
  "$eellm" train --init "$tmp/nan.safetensors" --train $train --data "$tmp/train.bin" --out "$tmp/init"
check "  no checkpoint, empty metrics" '[ ! -e "$tmp/init/checkpoint.safetensors" ] && [ ! -s "$tmp/init/metrics.jsonl" ]'

# Generation refuses a non-finite model: one line, no output.
expect_error "generate refuses NaN weights" \
  "nan\.safetensors: tensor 'transformer\.h\.0\.attn\.c_attn\.weight' has a non-finite value \(NaN\) at index 5$" \
  "$eellm" generate --ckpt "$tmp/nan.safetensors" --prompt "the quick" --max-tokens 4
"$eellm" generate --ckpt "$tmp/nan.safetensors" --prompt "the quick" --max-tokens 4 > "$tmp/nan.out" 2> /dev/null
check "  and prints nothing" '[ ! -s "$tmp/nan.out" ]'
# Finite weights whose logits overflow: no token from them.
cp "$tmp/ref/checkpoint.safetensors" "$tmp/big.safetensors"
for i in $(seq 0 31); do st poison "$tmp/big.safetensors" "$tmp/big.safetensors" transformer.ln_f.weight $i 3e38; done
"$eellm" generate --ckpt "$tmp/big.safetensors" --prompt "the quick" --max-tokens 4 > "$tmp/big.out" 2> "$tmp/big.err"
status=$?
check "overflowing logits: generation fails (status $status), no token printed" \
  '[ $status -ne 0 ] && [ ! -s "$tmp/big.out" ] && grep -q "non-finite logits" "$tmp/big.err"'

# A damaged checkpoint names the tensor; the opt-out loads it; no checksums loads.
st flip "$tmp/ref/checkpoint.safetensors" "$tmp/flip.safetensors" transformer.h.1.mlp.c_fc.weight 101
expect_error "flipped byte: generate names the damaged tensor" \
  "flip\.safetensors: tensor 'transformer\.h\.1\.mlp\.c_fc\.weight' fails its checksum \(file damaged" \
  "$eellm" generate --ckpt "$tmp/flip.safetensors" --prompt "the" --max-tokens 2
mkdir -p "$tmp/damaged" && cp "$tmp/flip.safetensors" "$tmp/damaged/checkpoint.safetensors"
expect_error "flipped byte: resume names the damaged tensor" \
  "tensor 'transformer\.h\.1\.mlp\.c_fc\.weight' fails its checksum \(file damaged" \
  "$eellm" train --train $train --data "$tmp/train.bin" --out "$tmp/damaged" --resume
EELLM_NO_CHECKSUM=1 "$eellm" generate --ckpt "$tmp/flip.safetensors" --prompt "the" --max-tokens 2 > /dev/null 2>&1
status=$?
check "EELLM_NO_CHECKSUM=1 loads it anyway" '[ $status -eq 0 ]'
mkdir -p "$tmp/old"
st strip "$tmp/lr3.safetensors" "$tmp/old/checkpoint.safetensors"
"$eellm" generate --ckpt "$tmp/old/checkpoint.safetensors" --prompt "the" --max-tokens 2 > /dev/null 2> "$tmp/old.err"
status=$?
check "a checkpoint without checksums generates, silently" '[ $status -eq 0 ] && [ ! -s "$tmp/old.err" ]'
head -3 "$tmp/ref/metrics.jsonl" > "$tmp/old/metrics.jsonl"
"$eellm" train --train $train --data "$tmp/train.bin" --out "$tmp/old" --resume > /dev/null 2>&1
status=$?
check "and resumes to the uninterrupted run's losses" '[ $status -eq 0 ] && cmp -s <(losses "$tmp/ref") <(losses "$tmp/old")'

finish fault_nonfinite
