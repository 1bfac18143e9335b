#!/usr/bin/env bash
# The spec checks on hostile specs (tests/specs/limits/ and binary specs made
# here by appending fields to a valid encoding): counts and sizes past the
# limits, sums and products that used to wrap, enums out of range in binary
# specs and checkpoints, non-finite floats, and specs big enough that a
# quadratic check or split would hang. Each is refused with status 2 and one
# line naming the file, the field and the value, within `timeout 10`.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
specs=tests/specs/limits
small=$specs/small.txtpb
# Every command runs under timeout 10: a hang shows as status 124, not a stuck test.
model() { timeout 10 "$eellm" model "$@"; }

# ---- counts, sizes and the products and sums of them -------------------------
expect_error "n_layers near 2^32" \
  "n_layers_wrap\.txtpb:9:1: field 'n_layers': value 4294967295 outside 1\.\.65536$" \
  model $specs/n_layers_wrap.txtpb
expect_error "a million layers" \
  "million_layers\.txtpb:9:1: field 'n_layers': value 1000000 outside 1\.\.65536$" \
  model $specs/million_layers.txtpb
expect_error "parameters past 2^40" \
  "too_many_params\.txtpb:9:1: field 'n_layers': value 65536 with d_model 65536 makes 3\.378e\+15 parameters, more than the 1\.1e\+12 \(2\^40\)" \
  model $specs/too_many_params.txtpb
base='vocab_size: 64
context_length: 32
d_model: 32
n_heads: 4
n_layers: 4'
variant() { printf '%s\n' "$base" | sed "s/^$2:.*/$2: $3/" > "$tmp/$1.txtpb"; }
variant dmodel d_model 4294967295
expect_error "d_model near 2^32" "dmodel\.txtpb:3:1: field 'd_model': value 4294967295 outside 1\.\.65536$" \
  model "$tmp/dmodel.txtpb"
variant context context_length 4294967295
expect_error "context_length near 2^32" "context\.txtpb:2:1: field 'context_length': value 4294967295 outside 1\.\.1048576$" \
  model "$tmp/context.txtpb"
printf '%s\nffn_size: 4294967295\nactivation: SWIGLU\n' "$base" > "$tmp/ffn.txtpb"
expect_error "ffn_size near 2^32" "ffn\.txtpb:6:1: field 'ffn_size': value 4294967295 outside 0\.\.1048576$" \
  model "$tmp/ffn.txtpb"

expect_error "micro_batches x dp wraps (eellm model --train)" \
  "batch_overflow\.train\.txtpb:5:1: field 'global_batch': value 8 is not a multiple of micro_batches 65536 x dp 65536$" \
  model $small --train $specs/batch_overflow.train.txtpb
expect_error "micro_batches x dp wraps (eellm train)" \
  "^eellm train: .*batch_overflow\.train\.txtpb:5:1: field 'global_batch': value 8 is not a multiple of micro_batches 65536 x dp 65536$" \
  timeout 10 "$eellm" train --model $small --train $specs/batch_overflow.train.txtpb \
  --data "$tmp/none.bin" --out "$tmp/run"
expect_error "stage_layers sum wraps (eellm model --train)" \
  "stage_layers_wrap\.train\.txtpb:5:36: field 'parallelism\.stage_layers': sums to 4294967300 layers but the model has 4$" \
  model $small --train $specs/stage_layers_wrap.train.txtpb
expect_error "stage_layers sum wraps (eellm train)" \
  "^eellm train: .*field 'parallelism\.stage_layers': sums to 4294967300 layers but the model has 4$" \
  timeout 10 "$eellm" train --model $small --train $specs/stage_layers_wrap.train.txtpb \
  --data "$tmp/none.bin" --out "$tmp/run"
printf 'global_batch: 67108864\n' > "$tmp/tokens.train.txtpb"
expect_error "tokens per step past 2^30" \
  "tokens\.train\.txtpb:1:1: field 'global_batch': value 67108864 x seq_len 32 is 2147483648 tokens a step, more than 1073741824$" \
  model $small --train "$tmp/tokens.train.txtpb"
printf 'eval_batches: 4294967295\n' > "$tmp/eval.train.txtpb"
expect_error "tokens per validation pass past 2^30" \
  "eval\.train\.txtpb:1:1: field 'eval_batches': value 4294967295 x 8 sequences x seq_len 32 is [0-9]+ tokens a validation pass" \
  model $small --train "$tmp/eval.train.txtpb"

# ---- the deepest models and pipelines: described at once ---------------------
deep=$specs/deep.txtpb
model $deep --train $specs/deep_pp1024.train.txtpb > "$tmp/out" 2>&1
status=$?
check "65536 layers in 1024 stages: described (status $status)" \
  '[ $status -eq 0 ] && grep -Eq "^  1023 +65473-65536 " "$tmp/out"'
expect_error "--pp past 1024" "--pp 2000 is more than the 1024 pipeline stages eellm runs$" \
  model $deep --pp 2000
printf 'parallelism { pp: 2000 }\n' > "$tmp/pp.train.txtpb"
expect_error "parallelism.pp past 1024" \
  "pp\.train\.txtpb:1:15: field 'parallelism\.pp': value 2000 outside 1\.\.1024 \(the most pipeline stages eellm runs\)$" \
  model $deep --train "$tmp/pp.train.txtpb"
# An exit on every one of 65536 layers: valid, and checked in linear time.
{ grep -v '^#' $deep; seq 1 65536 | sed 's/.*/exits { layer: & structure: MLP }/'; } > "$tmp/every.txtpb"
model "$tmp/every.txtpb" --pp 1024 --encode "$tmp/every.pb" > "$tmp/out" 2>&1
status=$?
check "an exit on each of 65536 layers: described (status $status)" \
  '[ $status -eq 0 ] && grep -Eq "^  65535 +65536 " "$tmp/out"'
{ grep -v '^#' $deep; seq 1 65535 | sed 's/.*/exits { layer: & }/'; echo 'exits { layer: 1 }'; } > "$tmp/dup.txtpb"
expect_error "a duplicate among 65536 exits" \
  "dup\.txtpb:65542:[0-9]+: field 'exits\[65535\]\.layer': value 1: exits\[0\] is on that layer too$" \
  model "$tmp/dup.txtpb"
{ printf '%s\n' "$base"; seq 1 200000 | sed 's/.*/exits { layer: 1 }/'; } > "$tmp/many.txtpb"
expect_error "200000 exits on 4 layers" \
  "many\.txtpb:10:1: field 'exits': 200000 exits but at most one per layer and n_layers is 4$" \
  model "$tmp/many.txtpb"

# ---- binary specs: every enum, nested and repeated too, and floats -----------
"$eellm" model $small --encode "$tmp/small.pb" > /dev/null
# binary NAME BYTES: small.pb with BYTES (printf escapes) appended; protobuf's last value wins.
binary() { { cat "$tmp/small.pb"; printf "$2"; } > "$tmp/$1.pb"; }
binary activation '\x48\x07'
expect_error "binary activation 7" \
  "activation\.pb: field 'activation': unknown enum value 7 \(expected GELU or SWIGLU\)$" \
  model "$tmp/activation.pb"
model "$tmp/activation.pb" --decode "$tmp/activation.txtpb" > /dev/null 2>&1
status=$?
check "binary activation 7: --decode writes nothing (status $status)" \
  '[ $status -eq 2 ] && [ ! -e "$tmp/activation.txtpb" ]'
binary negative '\x48\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01'
expect_error "binary activation -1" "negative\.pb: field 'activation': unknown enum value -1 " \
  model "$tmp/negative.pb"
binary norm '\x40\x05'
expect_error "binary norm 5" "norm\.pb: field 'norm': unknown enum value 5 \(expected LAYERNORM or RMSNORM\)$" \
  model "$tmp/norm.pb"
binary positions '\x50\x09'
expect_error "binary positions 9" "positions\.pb: field 'positions': unknown enum value 9 \(expected LEARNED or ROPE\)$" \
  model "$tmp/positions.pb"
binary structure '\x82\x01\x04\x08\x03\x18\x07'
expect_error "binary exit structure 7" \
  "structure\.pb: field 'exits\[1\]\.structure': unknown enum value 7 \(expected PLAIN, NORM, MLP or BLOCK\)$" \
  model "$tmp/structure.pb"
binary placement '\x82\x01\x04\x08\x03\x10\x05'
expect_error "binary exit placement 5" \
  "placement\.pb: field 'exits\[1\]\.placement': unknown enum value 5 \(expected POST or PRE\)$" \
  model "$tmp/placement.pb"
binary shape '\x82\x01\x06\x08\x03\x32\x02\x18\x05'
expect_error "binary schedule shape 5" \
  "shape\.pb: field 'exits\[1\]\.schedule\.shape': unknown enum value 5 \(expected LINEAR or COSINE\)$" \
  model "$tmp/shape.pb"
binary eps '\x6d\x00\x00\x80\x7f'
expect_error "binary norm_eps inf" "eps\.pb: field 'norm_eps': value inf is not a finite number$" \
  model "$tmp/eps.pb"
: > "$tmp/empty.train.pb" # every field at its default
model $small --train "$tmp/empty.train.pb" > /dev/null 2>&1
status=$?
check "empty binary training spec: the defaults (status $status)" '[ $status -eq 0 ]'
printf '\x12\x02\x08\x09' > "$tmp/kind.train.pb"
expect_error "binary lr_schedule kind 9" \
  "kind\.train\.pb: field 'lr_schedule\.kind': unknown enum value 9 \(expected COSINE or CONSTANT\)$" \
  model $small --train "$tmp/kind.train.pb"
printf '\x0a\x05\x0d\x00\x00\x80\x7f' > "$tmp/lr.train.pb"
expect_error "binary optimizer lr inf" "lr\.train\.pb: field 'optimizer\.lr': value inf is not a finite number$" \
  model $small --train "$tmp/lr.train.pb"

# A checkpoint's stored spec goes through the same checks (a safetensors file
# with no tensors: the spec is read first).
/usr/bin/python3 - "$tmp/activation.pb" "$tmp/bad.safetensors" <<'EOT'
import base64, json, struct, sys
spec = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
header = json.dumps({"__metadata__": {"spec": spec}}).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(header)) + header)
EOT
printf 'steps: 1\n' > "$tmp/one.train.txtpb"
expect_error "checkpoint with activation 7" \
  "bad\.safetensors: field 'activation': unknown enum value 7 \(expected GELU or SWIGLU\)$" \
  timeout 10 "$eellm" train --init "$tmp/bad.safetensors" --train "$tmp/one.train.txtpb" \
  --data "$tmp/none.bin" --out "$tmp/run"

# ---- non-finite floats in text: every float field ----------------------------
expect_error "norm_eps inf" "inf_norm_eps\.txtpb:10:1: field 'norm_eps': value inf is not a finite number$" \
  model $specs/inf_norm_eps.txtpb
for field in rope_theta init_std; do
  printf '%s\n%s: inf\n' "$base" $field > "$tmp/$field.txtpb"
  expect_error "$field inf" "$field\.txtpb:6:1: field '$field': value inf is not a finite number$" \
    model "$tmp/$field.txtpb"
done
for field in temperature loss_weight; do
  printf '%s\nexits { layer: 2 %s: inf }\n' "$base" $field > "$tmp/$field.txtpb"
  expect_error "exit $field inf" "$field\.txtpb:6:[0-9]+: field 'exits\[0\]\.$field': value inf is not a finite number$" \
    model "$tmp/$field.txtpb"
done
printf '%s\nexits { layer: 2 schedule { init: inf } }\n' "$base" > "$tmp/init.txtpb"
expect_error "schedule init inf" "init\.txtpb:6:[0-9]+: field 'exits\[0\]\.schedule\.init': value inf is not a finite number$" \
  model "$tmp/init.txtpb"
for field in lr eps grad_clip weight_decay; do
  printf 'optimizer { %s: inf }\n' $field > "$tmp/$field.train.txtpb"
  expect_error "optimizer $field inf" "$field\.train\.txtpb:1:13: field 'optimizer\.$field': value inf is not a finite number$" \
    model $small --train "$tmp/$field.train.txtpb"
done
printf 'lr_schedule { min_lr: inf }\n' > "$tmp/min_lr.train.txtpb"
expect_error "min_lr inf" "min_lr\.train\.txtpb:1:15: field 'lr_schedule\.min_lr': value inf is not a finite number$" \
  model $small --train "$tmp/min_lr.train.txtpb"
printf '%s\nnorm_eps: nan\n' "$base" > "$tmp/nan.txtpb"
expect_error "norm_eps nan (as before)" "nan\.txtpb:6:1: field 'norm_eps': value nan must be positive$" \
  model "$tmp/nan.txtpb"

finish spec_checks
