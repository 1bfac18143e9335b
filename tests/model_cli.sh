#!/usr/bin/env bash
# `eellm model` on good and bad specs: every example is described, converts to
# binary and back, and every bad spec gets one line naming file, position and
# field, with exit status 2 and no crash.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"

for spec in examples/*.txtpb; do
  grep -q 'proto-message: eellm.Model' "$spec" || continue
  if "$eellm" model "$spec" --encode "$tmp/m.pb" --decode "$tmp/m.txtpb" > "$tmp/out" 2>&1 &&
     grep -q '^parameters' "$tmp/out" && grep -q '^FLOPs per token' "$tmp/out"; then pass; else fail "describe $spec"; cat "$tmp/out"; fi
  # binary -> text -> binary is the identity
  if "$eellm" model "$tmp/m.pb" --decode "$tmp/back.txtpb" > /dev/null &&
     "$eellm" model "$tmp/back.txtpb" --encode "$tmp/back.pb" > /dev/null &&
     cmp -s "$tmp/m.pb" "$tmp/back.pb"; then pass; else fail "round trip $spec"; fi
done

"$eellm" model examples/default.txtpb --pp 3 > "$tmp/out" 2>&1
if grep -Eq '^  2 +5-6' "$tmp/out"; then pass; else fail "pp 3 split of the default model"; cat "$tmp/out"; fi


base='vocab_size: 64
context_length: 32
d_model: 32
n_heads: 4
n_layers: 4'
bad() { printf '%s\n%s\n' "$base" "$2" > "$tmp/$1.txtpb"; }

bad unknown 'd_modle: 3'
expect_error "unknown field" "unknown\.txtpb:6:1: .*unknown field 'd_modle'" "$eellm" model "$tmp/unknown.txtpb"
bad wrongtype 'ffn_size: "four"'
expect_error "wrong type" "wrongtype\.txtpb:6:11: .*'ffn_size'" "$eellm" model "$tmp/wrongtype.txtpb"
bad exitlayer 'exits { layer: 9 }'
expect_error "exit layer outside" "exitlayer\.txtpb:6:[0-9]+: field 'exits\[0\]\.layer': value 9 outside 1\.\.4" "$eellm" model "$tmp/exitlayer.txtpb"
bad exitzero 'exits { layer: 0 }'
expect_error "exit layer zero" "exitzero\.txtpb:6:.*'exits\[0\]\.layer': value 0 outside 1\.\.4" "$eellm" model "$tmp/exitzero.txtpb"
printf '%s\n' "$base" | sed 's/n_heads: 4/n_heads: 5/' > "$tmp/heads.txtpb"
expect_error "d_model not divisible" "heads\.txtpb:.*field 'd_model': value 32 is not divisible by n_heads 5" "$eellm" model "$tmp/heads.txtpb"
bad twoexits 'exits { layer: 2 }
exits { layer: 2 structure: MLP }'
expect_error "two exits on one layer" "twoexits\.txtpb:7:.*'exits\[1\]\.layer': value 2: exits\[0\] is on that layer too" "$eellm" model "$tmp/twoexits.txtpb"
bad negweight 'exits { layer: 2 loss_weight: -0.5 }'
expect_error "negative weight" "negweight\.txtpb:6:.*'exits\[0\]\.loss_weight': value -0.5 is negative" "$eellm" model "$tmp/negweight.txtpb"
bad mlpinput 'exits { layer: 2 structure: NORM mlp_input: LAYER_NORM_OUTPUT }'
expect_error "mlp_input on a NORM exit" "mlpinput\.txtpb:6:.*'exits\[0\]\.mlp_input': a non-default mlp_input applies to MLP exits only, this one is NORM" "$eellm" model "$tmp/mlpinput.txtpb"
bad enum 'norm: LAYERNROM'
expect_error "bad enum" "enum\.txtpb:6:.*LAYERNROM" "$eellm" model "$tmp/enum.txtpb"
bad unclosed 'exits { layer: 2'
expect_error "unclosed brace" "unclosed\.txtpb:" "$eellm" model "$tmp/unclosed.txtpb"

printf '%s\n' "$base" > "$tmp/good.txtpb"
expect_error "pp larger than layers" "pp 5 is larger than the 4 layers" "$eellm" model "$tmp/good.txtpb" --pp 5
printf 'parallelism { pp: 6 }\n' > "$tmp/train.txtpb"
expect_error "train pp larger than layers" "train\.txtpb:1:.*'parallelism\.pp': value 6 outside 1\.\.4" "$eellm" model "$tmp/good.txtpb" --train "$tmp/train.txtpb"

"$eellm" model examples/default.txtpb --encode "$tmp/default.pb" > /dev/null
size=$(stat -c %s "$tmp/default.pb")
head -c $((size - 3)) "$tmp/default.pb" > "$tmp/truncated.pb"
expect_error "truncated binary" "truncated\.pb: .*(truncated|malformed)" "$eellm" model "$tmp/truncated.pb"
expect_error "missing file" "nosuch\.txtpb" "$eellm" model "$tmp/nosuch.txtpb"
expect_error "train spec given as model" "declares proto-message eellm.Train" "$eellm" model examples/default.train.txtpb

finish model_cli
