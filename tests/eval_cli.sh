#!/usr/bin/env bash
# eellm eval end to end on a tiny model trained here: the per-exit losses and
# the threshold sweep's shares, losses and agreement against an independent
# PyTorch computation (tests/torch_eval_parity.py); calibration keeps its target
# on the calibration half of the validation tokens and, within 3 standard
# errors, on the held-out half; the threshold lands in the checkpoint's metadata
# and generate and serve use it when no threshold is given; the trigram
# baseline against an independent computation (tests/trigram_reference.py) and
# the --summary lines; bad usage gets one line.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 STARPU_NCPU=${STARPU_NCPU:-2}
py=/usr/bin/python3

byte_corpus 6 60 0.2
train="$tmp/train.txtpb"
sed 's/^steps: .*/steps: 150/; s/^eval_interval: .*/eval_interval: 150/; s/^checkpoint_interval: .*/checkpoint_interval: 150/' \
  tests/specs/tiny.train.txtpb > "$train"
"$eellm" train --model tests/specs/tiny.txtpb --train "$train" --data "$tmp/train.bin" \
  --out "$tmp/run" > "$tmp/train.log" 2>&1
check "train a tiny model" '[ -s "$tmp/run/checkpoint.safetensors" ]'

"$eellm" --help > "$tmp/help" 2>&1
check "eellm --help lists eval" 'grep -q "^  eval " "$tmp/help"'
"$eellm" eval --help > "$tmp/help" 2>&1
check "eval --help" 'grep -q -- "--calibrate" "$tmp/help"'

# The sweep, default outputs in the run directory.
"$eellm" eval --ckpt "$tmp/run" --data "$tmp/val.bin" > "$tmp/eval.out" 2>&1
status=$?
check "eval exits 0 (got $status)" '[ $status -eq 0 ]'
check "per-exit table" 'grep -Eq "^final +3 +[0-9.]+ +[0-9.]+" "$tmp/eval.out"'
check "sweep rows for both rules" '[ "$(grep -Ec "^(maxprob|entropy) " "$tmp/eval.out")" -eq 22 ]'
check "threshold 1 is full depth" 'grep -Eq "^maxprob +1 +0.0% +0.0% +100.0% +1.000x .* 0.00% +100.00%" "$tmp/eval.out"'
check "eval.json and eval.svg in the run" '[ -s "$tmp/run/eval.json" ] && [ -s "$tmp/run/eval.svg" ]'
check "eval.svg is XML with a line per rule" \
  "$py -c 'import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); n = sum(1 for e in r.iter() if e.tag.endswith(\"polyline\")); sys.exit(n != 2)' '$tmp/run/eval.svg'"

# Against PyTorch.
$py tests/torch_eval_parity.py "$tmp/run/checkpoint.safetensors" "$tmp/val.bin" "$tmp/run/eval.json" > "$tmp/parity.out" 2>&1
status=$?
cat "$tmp/parity.out"
check "eval figures match PyTorch" '[ $status -eq 0 ]'

# The trigram baseline and the summary at a given threshold.
"$eellm" eval --ckpt "$tmp/run" --data "$tmp/val.bin" --baseline-train "$tmp/train.bin" \
  --summary --thresholds 0.8 --json "$tmp/base.json" --svg "$tmp/base.svg" > "$tmp/base.out" 2>&1
status=$?
check "eval --baseline-train --summary exits 0 (got $status)" '[ $status -eq 0 ]'
check "every exit against the trigram" \
  '[ "$(grep -Ec "^(0|1|final) +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[+-][0-9.]+$" "$tmp/base.out")" -eq 3 ]'
check "the trigram's row" 'grep -Eq "^trigram +[0-9.]+ +[0-9.]+ +\(Kneser-Ney, counted on " "$tmp/base.out"'
check "summary: threshold" 'grep -q "^early exit: threshold 0.8 (maxprob rule, --thresholds)$" "$tmp/base.out"'
check "summary: speedup" 'grep -Eq "^speedup bound [0-9.]+x over full depth; tokens leaving at L1 [0-9.]+%, L2 [0-9.]+%, final L3 [0-9.]+%$" "$tmp/base.out"'
check "summary: loss increase" 'grep -Eq "^loss increase [+-][0-9.]+% \([0-9.]+ against the final head.s [0-9.]+\); top-1 agreement [0-9.]+%$" "$tmp/base.out"'
check "no sweep table with --summary" '! grep -Eq "^(maxprob|entropy) " "$tmp/base.out"'
$py tests/trigram_reference.py "$tmp/train.bin" "$tmp/val.bin" "$tmp/base.json" > "$tmp/tri.out" 2>&1
status=$?
cat "$tmp/tri.out"
check "trigram baseline matches the reference" '[ $status -eq 0 ]'

# Calibration on one half of the validation tokens, checked on the other.
$py - "$tmp/val.bin" "$tmp/A.bin" "$tmp/B.bin" <<'EOF'
import struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[24:32])[0]
for path, a, b in ((sys.argv[2], 0, n // 2), (sys.argv[3], n // 2, n)):
    open(path, "wb").write(raw[:24] + struct.pack("<Q", b - a) + raw[32 + 2 * a:32 + 2 * b])
EOF
# meets FILE.json KIND VALUE: every calibrated point and every point at a higher
# threshold of its rule keeps the target on the calibration data (no tolerance).
meets() {
  $py - "$@" <<'EOF'
import json, sys
ev, kind, value = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[3])
cal = {p["rule"]: p["threshold"] for p in ev["sweep"] if p["calibrated"]}
ok = len(cal) == 2
for p in ev["sweep"]:
    if p["rule"] in cal and p["threshold"] >= cal[p["rule"]]:
        good = p["loss_increase"] <= value if kind == "loss" else p["agreement"] >= value
        ok &= good
        if p["calibrated"]:
            print(f"calibrated {p['rule']} {p['threshold']:.4g}: increase {p['loss_increase']:.4f}, "
                  f"agreement {p['agreement']:.4f}, speedup {p['speedup']:.3f}")
sys.exit(0 if ok else 1)
EOF
}
for target in "loss 5% 0.05 --max-loss-increase" "agreement 0.98 0.98 --min-agreement"; do
  set -- $target
  kind=$1 arg=$2 value=$3 option=$4
  ckpt="$tmp/cal-$kind.safetensors"
  cp "$tmp/run/checkpoint.safetensors" "$ckpt"
  "$eellm" eval --ckpt "$ckpt" --data "$tmp/A.bin" --calibrate $option $arg \
    --json "$tmp/A-$kind.json" --svg "$tmp/A-$kind.svg" > "$tmp/cal.out" 2>&1
  status=$?
  check "calibrate $option $arg exits 0 (got $status)" '[ $status -eq 0 ]'
  check "calibration stored in the metadata ($kind)" \
    "$py -c 'import sys; sys.path.insert(0, \"tests\"); from torch_parity import read_safetensors as r; m = r(sys.argv[1])[1]; sys.exit(not (0 < float(m[\"eellm.threshold.maxprob\"]) < 1 and \"eellm.threshold.entropy\" in m and \"eellm.calibration\" in m))' '$ckpt'"
  check "target $arg kept on the calibration half" meets "$tmp/A-$kind.json" "$kind" "$value"
  "$eellm" eval --ckpt "$ckpt" --data "$tmp/B.bin" --json "$tmp/B-$kind.json" --svg "$tmp/B-$kind.svg" \
    > /dev/null 2>&1
  $py tests/torch_eval_parity.py "$ckpt" "$tmp/B.bin" "$tmp/B-$kind.json" --heldout "$kind" "$value" \
    > "$tmp/held.out" 2>&1
  status=$?
  cat "$tmp/held.out"
  check "target $arg kept on the held-out half ($kind)" '[ $status -eq 0 ]'
done

# generate takes the calibrated threshold when none is given, and a given one wins.
ckpt="$tmp/cal-loss.safetensors"
"$eellm" generate --ckpt "$ckpt" --prompt "the quick" --max-tokens 16 --show-exits \
  > "$tmp/gen.out" 2> "$tmp/gen.err"
check "generate reports the calibrated threshold" 'grep -q "calibrated, from the checkpoint" "$tmp/gen.err"'
check "generate exits early with it" 'grep -Eq "tokens per exit: layer [12] " "$tmp/gen.out"'
"$eellm" generate --ckpt "$ckpt" --prompt "the quick" --max-tokens 16 --threshold 1 --show-exits \
  > "$tmp/gen1.out" 2> "$tmp/gen1.err"
check "--threshold 1 overrides it" '! grep -q calibrated "$tmp/gen1.err" && grep -q "tokens per exit: layer 3 (final) 16 (100.0%)" "$tmp/gen1.out"'

# serve: requests without early_exit_thres get the calibrated threshold.
if command -v curl > /dev/null; then
  "$eellm" serve --ckpt "$ckpt" --port 0 > "$tmp/serve.out" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do grep -q "/api" "$tmp/serve.out" && break; sleep 0.1; done
  port=$(sed -n 's/.*:\([0-9]*\)\/api.*/\1/p' "$tmp/serve.out" | head -1)
  ask() { curl -s -X PUT "http://127.0.0.1:$port/api" -d "{\"prompts\": [\"the quick\"], \"tokens_to_generate\": 12, \"use_early_exit\": true, \"temperature\": 0$1}"; }
  check "serve announces the calibrated threshold" 'grep -q "default early_exit_thres .* (calibrated)" "$tmp/serve.out"'
  check "serve exits early without early_exit_thres" 'ask "" | grep -Eq "\"exit_layers\":\[\[[^]]*[12][],]"'
  check "early_exit_thres 1 still turns exits off" 'ask ", \"early_exit_thres\": 1" | grep -q "\"exit_layers\":\[\[3,3,3,3,3,3,3,3,3,3,3,3\]\]"'
  kill $server
  wait $server 2> /dev/null
fi

# Bad usage: one line, status 2.
expect_error "calibrate without a target" "one target" \
  "$eellm" eval --ckpt "$tmp/run" --data "$tmp/val.bin" --calibrate
expect_error "target without calibrate" "go with --calibrate" \
  "$eellm" eval --ckpt "$tmp/run" --data "$tmp/val.bin" --min-agreement 0.9
expect_error "bad threshold list" "--thresholds" \
  "$eellm" eval --ckpt "$tmp/run" --data "$tmp/val.bin" --thresholds 0.9,0
expect_error "missing data" "nope.bin" \
  "$eellm" eval --ckpt "$tmp/run" --data "$tmp/nope.bin"
expect_error "missing baseline corpus" "nope.bin" \
  "$eellm" eval --ckpt "$tmp/run" --data "$tmp/val.bin" --baseline-train "$tmp/nope.bin"
"$eellm" tokenize --tokenizer gpt2 "$tmp/corpus" -o "$tmp/gpt2.bin" > /dev/null 2>&1
expect_error "baseline corpus of another tokenizer" "gpt2.bin: tokenizer 1 with 50257 ids, but .* has tokenizer 0 with 257 ids" \
  "$eellm" eval --ckpt "$tmp/run" --data "$tmp/val.bin" --baseline-train "$tmp/gpt2.bin"
expect_error "seq-len above the context" "above the model's context" \
  "$eellm" eval --ckpt "$tmp/run" --data "$tmp/val.bin" --seq-len 64

finish eval_cli
