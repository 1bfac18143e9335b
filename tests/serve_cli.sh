#!/usr/bin/env bash
# eellm serve end to end, with curl on 127.0.0.1, on a tiny model trained for two
# steps: valid requests are answered with consistent fields and lengths, early-exit
# options reach the generator, concurrent requests are all answered, every kind of
# bad request gets its 4xx and a JSON error at once (even while a long generation
# runs) and leaves the server running, a garbage request line and two different
# Content-Length headers get 400, and SIGTERM stops it cleanly (exit 0).
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 STARPU_NCPU=${STARPU_NCPU:-2}

# The tiny model (3 layers, exits after layers 1 and 2, context 32, byte tokenizer).
byte_corpus 3 40
"$eellm" train --model tests/specs/tiny.txtpb --train tests/specs/tiny.train.txtpb \
  --data "$tmp/train.bin" --steps 2 --out "$tmp/run" > /dev/null 2>&1
check "a two-step checkpoint" '[ -s "$tmp/run/checkpoint.safetensors" ]'

"$eellm" serve --ckpt "$tmp/run" --host 127.0.0.1 --port 0 --max-batch 4 > "$tmp/out" 2> "$tmp/log" &
server=$!
port=$(server_port "$tmp/out" 10)
check "the server says where it listens" '[ -n "$port" ]'
[ -n "$port" ] || { cat "$tmp/log"; finish serve_cli; exit; }
url=http://127.0.0.1:$port/api
for _ in $(seq 1 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url")" = 405 ] && break
  sleep 0.1
done

# put NAME BODY [CURL ARGS]: sends the body, the answer in $tmp/NAME.json; prints the status.
put() {
  local name=$1 body=$2
  shift 2
  curl -s --max-time 120 -o "$tmp/$name.json" -w '%{http_code}' -X PUT "$url" \
    -H 'Content-Type: application/json' --data-binary "$body" "$@"
}

# answer_ok NAME PROMPTS_JSON MAX_TOKENS LOGPROBS [EXIT_LAYER [ECHO]]: the answer's fields
# and lengths (byte tokenizer: a prompt's tokens are its bytes), and, when given, the exit
# every generated token must have used (- for any); ECHO 1: the request had echo_prompts
# true (text, segments and tokens begin with the prompt's).
answer_ok() {
  local name=$1
  shift
  /usr/bin/python3 - "$tmp/$name.json" "$@" > "$tmp/$name.check" 2>&1 << 'EOT'
import json, math, sys
a = json.load(open(sys.argv[1]))
prompts, max_tokens, logprobs = json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
exit_layer = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "-" else None
echo = len(sys.argv) > 6 and sys.argv[6] == "1"
# EE-LLM's keys (logprobs null when not asked for) and eellm's own.
assert set(a) == {"text", "segments", "logprobs", "requst_time", "tokens", "exit_layers"}, sorted(a)
assert isinstance(a["requst_time"], float) and a["requst_time"] >= 0, a["requst_time"]
fields = {"text", "segments", "tokens", "exit_layers"} | ({"logprobs"} if logprobs else set())
assert logprobs or a["logprobs"] is None, a["logprobs"]
assert all(len(a[f]) == len(prompts) for f in fields), "one entry per prompt"
for i, p in enumerate(prompts):
    ids, gen = a["tokens"][i], len(a["exit_layers"][i])
    shown = len(p) if echo else 0
    assert 1 <= gen <= max_tokens, f"prompt {i}: {gen} tokens generated"
    assert ids[:shown] == list(p.encode()[:shown]) and len(ids) == shown + gen, f"prompt {i}: tokens {ids}"
    assert all(0 <= t < 257 for t in ids), ids
    assert 256 not in ids[shown:-1], "generation went on after the end-of-text token"
    assert len(a["segments"][i]) == len(ids) and a["segments"][i][:shown] == list(p[:shown])
    assert a["text"][i].startswith(p[:shown])
    if all(t < 128 or t == 256 for t in ids):
        assert a["text"][i] == "".join(a["segments"][i]), "text is (prompt +) generated text"
    assert all(1 <= e <= 3 for e in a["exit_layers"][i]), a["exit_layers"][i]
    if exit_layer is not None:
        assert set(a["exit_layers"][i]) == {exit_layer}, a["exit_layers"][i]
    if logprobs:
        lp = a["logprobs"][i]
        if echo:
            assert lp[:len(p) - 1] == [None] * (len(p) - 1), lp
            lp = lp[len(p) - 1:]
        assert len(lp) == gen and all(isinstance(x, float) and x <= 0 and math.isfinite(x) for x in lp), lp
print("ok")
EOT
  grep -q '^ok' "$tmp/$name.check" || { cat "$tmp/$name.check"; return 1; }
}

# A valid request: greedy, through the final head (threshold 1).
status=$(put valid '{"prompts": ["the quick", "lazy dog"], "tokens_to_generate": 8, "use_early_exit": true, "early_exit_thres": 1, "temperature": 0, "logprobs": true}')
check "valid request: 200 (got $status)" '[ "$status" = 200 ]'
check "valid request: fields and lengths" 'answer_ok valid "[\"the quick\", \"lazy dog\"]" 8 1 3'
status=$(put valid-echo '{"prompts": ["the quick", "lazy dog"], "tokens_to_generate": 8, "temperature": 0, "logprobs": true, "echo_prompts": true}')
check "echo_prompts: 200 (got $status), the prompt in text, segments and tokens" \
  '[ "$status" = 200 ] && answer_ok valid-echo "[\"the quick\", \"lazy dog\"]" 8 1 3 1'
status=$(put defaults '{"prompts": ["fox"]}')
# 64 tokens by default, but generation stops when the context (32) is full.
check "defaults: 200 (got $status), no logprobs" '[ "$status" = 200 ] && answer_ok defaults "[\"fox\"]" 29 0'
# A threshold below 1/vocabulary: every token leaves at the first exit allowed.
status=$(put exit-any '{"prompts": ["the"], "tokens_to_generate": 6, "use_early_exit": true, "early_exit_thres": 0.001, "temperature": 0}')
check "early exit at layer 1 (got $status)" '[ "$status" = 200 ] && answer_ok exit-any "[\"the\"]" 6 0 1'
status=$(put exit-2 '{"prompts": ["the"], "tokens_to_generate": 6, "use_early_exit": true, "early_exit_thres": 0.001, "exit_layers": [3, 2], "temperature": 0}')
check "early exit at layer 2 only (got $status)" '[ "$status" = 200 ] && answer_ok exit-2 "[\"the\"]" 6 0 2'
status=$(put exit-final '{"prompts": ["the"], "tokens_to_generate": 6, "use_early_exit": true, "early_exit_thres": 0.001, "exit_layers": [3], "temperature": 0}')
check "exit_layers [3]: the final head only (got $status)" '[ "$status" = 200 ] && answer_ok exit-final "[\"the\"]" 6 0 3'
status=$(put exit-off '{"prompts": ["the"], "tokens_to_generate": 6, "use_early_exit": false, "early_exit_thres": 0.001, "temperature": 0}')
check "use_early_exit false is read as false (got $status)" '[ "$status" = 200 ] && answer_ok exit-off "[\"the\"]" 6 0 3'
# Sampling with a seed is reproducible.
sampled='{"prompts": ["dog", "fox"], "tokens_to_generate": 10, "temperature": 1.5, "top_k": 50, "top_p": 0.9, "random_seed": 42}'
put seeded-a "$sampled" > /dev/null
put seeded-b "$sampled" > /dev/null
check "sampled answers fields and lengths" 'answer_ok seeded-a "[\"dog\", \"fox\"]" 10 0'
same_answer() { # but for requst_time
  /usr/bin/python3 -c '
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
a.pop("requst_time"), b.pop("requst_time")
assert a == b' "$1" "$2"
}
check "the same seed gives the same answer" 'same_answer "$tmp/seeded-a.json" "$tmp/seeded-b.json"'

# Concurrent requests (more prompts than --max-batch): every one is answered.
pids=()
for i in 1 2 3 4 5 6; do
  put "concurrent$i" "{\"prompts\": [\"number $i\", \"fox $i\"], \"tokens_to_generate\": 5, \"temperature\": 0}" > "$tmp/concurrent$i.status" &
  pids+=($!)
done
wait "${pids[@]}"
for i in 1 2 3 4 5 6; do
  got=$(cat "$tmp/concurrent$i.status")
  check "concurrent request $i: 200 (got $got)" \
    "[ '$got' = 200 ] && answer_ok concurrent$i '[\"number $i\", \"fox $i\"]' 5 0"
done

# bad NAME STATUS PATTERN BODY [CURL ARGS]: that status, a JSON error containing the
# pattern, and the server still running.
bad() {
  local name=$1 want=$2 pattern=$3 body=$4
  shift 4
  local got
  got=$(put "$name" "$body" "$@")
  if [ "$got" = "$want" ] &&
    /usr/bin/python3 -c 'import json, sys; e = json.load(open(sys.argv[1]))["error"]; assert sys.argv[2] in e, e' \
      "$tmp/$name.json" "$pattern" 2> "$tmp/$name.err" &&
    kill -0 $server 2> /dev/null; then
    pass
  else
    fail "$name: status $got, answer $(head -c 300 "$tmp/$name.json"), $(tail -1 "$tmp/$name.err")"
  fi
}
bad malformed 400 "malformed JSON" '{"prompts": ["a"'
bad not-object 400 "JSON object" '["a"]'
bad empty-body 400 "malformed JSON" ''
bad no-prompts 400 "'prompts' is missing" '{"tokens_to_generate": 4}'
bad prompts-number 400 "'prompts'" '{"prompts": 3}'
bad prompts-empty 400 "'prompts'" '{"prompts": []}'
bad prompt-number 400 "'prompts[1]'" '{"prompts": ["a", 3]}'
bad prompt-empty 400 "'prompts[0]' is empty: empty prompts need add_BOS" '{"prompts": [""]}'
bad tokens-negative 400 "'tokens_to_generate'" '{"prompts": ["a"], "tokens_to_generate": -3}'
bad tokens-string 400 'not "5"' '{"prompts": ["a"], "tokens_to_generate": "5"}'
bad tokens-real 400 "'tokens_to_generate'" '{"prompts": ["a"], "tokens_to_generate": 2.5}'
bad tokens-over-context 400 "'tokens_to_generate'" '{"prompts": ["a"], "tokens_to_generate": 33}'
bad threshold-zero 400 "'early_exit_thres'" '{"prompts": ["a"], "early_exit_thres": 0}'
bad threshold-over 400 "not 1.5" '{"prompts": ["a"], "early_exit_thres": 1.5}'
bad threshold-string 400 "'early_exit_thres'" '{"prompts": ["a"], "early_exit_thres": "0.5"}'
bad top-p-negative 400 "'top_p'" '{"prompts": ["a"], "top_p": -0.1}'
bad top-p-over 400 "'top_p'" '{"prompts": ["a"], "top_p": 1.01}'
bad top-k-negative 400 "'top_k'" '{"prompts": ["a"], "top_k": -1}'
bad temperature 400 "'temperature'" '{"prompts": ["a"], "temperature": -0.5}'
bad seed 400 "'random_seed'" '{"prompts": ["a"], "random_seed": -1}'
bad early-exit-int 400 "'use_early_exit'" '{"prompts": ["a"], "use_early_exit": 1}'
bad logprobs-string 400 "'logprobs'" '{"prompts": ["a"], "logprobs": "yes"}'
bad exit-layer 400 "'exit_layers[1]'" '{"prompts": ["a"], "exit_layers": [3, 4]}'
bad exit-layer-zero 400 "'exit_layers[0]'" '{"prompts": ["a"], "exit_layers": [0]}'
bad exit-layers-int 400 "'exit_layers'" '{"prompts": ["a"], "exit_layers": 1}'
bad unknown-field 400 "unknown field 'add_bos'" '{"prompts": ["a"], "add_bos": true}'
bad max-len 400 "max_len is no longer used" '{"prompts": ["a"], "max_len": 4}'
bad sentences 400 "sentences is no longer used" '{"sentences": ["a"]}'
bad echo-int 400 "'echo_prompts'" '{"prompts": ["a"], "echo_prompts": 1}'
bad print-max-prob-string 400 "'print_max_prob'" '{"prompts": ["a"], "print_max_prob": "yes"}'
bad add-bos-int 400 "'add_BOS'" '{"prompts": ["a"], "add_BOS": 1}'
bad no-log-int 400 "'no_log'" '{"prompts": ["a"], "no_log": 0}'
bad stop-on-eol-int 400 "'stop_on_eol'" '{"prompts": ["a"], "stop_on_eol": 1}'
bad stop-sequences-string 400 "'stop_sequences'" '{"prompts": ["a"], "stop_sequences": "x"}'
bad stop-sequence-number 400 "'stop_sequences[1]'" '{"prompts": ["a"], "stop_sequences": ["x", 1]}'
bad stop-sequence-empty 400 "'stop_sequences[0]'" '{"prompts": ["a"], "stop_sequences": [""]}'
bad top-p-decay-alone 400 "need a 'top_p'" '{"prompts": ["a"], "top_p_decay": 0.9}'
bad top-p-bound-over 400 "'top_p_bound'" '{"prompts": ["a"], "top_p": 0.5, "top_p_bound": 0.6}'
bad top-p-decay-top-p-0 400 "need a 'top_p'" '{"prompts": ["a"], "top_p": 0, "top_p_decay": 0.5}'
bad top-p-decay-over 400 "'top_p_decay'" '{"prompts": ["a"], "top_p": 0.9, "top_p_decay": 1.5}'
bad newline-after-colon-int 400 "'prevent_newline_after_colon'" '{"prompts": ["a"], "prevent_newline_after_colon": 1}'
bad method 400 "'method' must be \"recompute\", \"pipeline\" or \"speculative\", not \"beam\"" '{"prompts": ["a"], "method": "beam"}'
bad draft-exit-final 400 "'draft_exit' must be a layer with an exit (the model's: 1, 2), not 3" '{"prompts": ["a"], "method": "speculative", "draft_exit": 3}'
bad draft-exit-string 400 "'draft_exit'" '{"prompts": ["a"], "method": "speculative", "draft_exit": "1"}'
bad draft-exit-missing 400 "needs 'draft_exit'" '{"prompts": ["a"], "method": "speculative"}'
bad draft-tokens-over 400 "'draft_tokens' must be an integer from 1 to 16, not 17" '{"prompts": ["a"], "method": "speculative", "draft_exit": 1, "draft_tokens": 17}'
bad draft-without-method 400 "go with" '{"prompts": ["a"], "draft_exit": 1}'
bad beam-width 400 "beam search is not supported" '{"prompts": ["a"], "beam_width": 2}'
bad beam-width-zero 400 "'beam_width'" '{"prompts": ["a"], "beam_width": 0}'
bad length-penalty 400 "'length_penalty'" '{"prompts": ["a"], "length_penalty": "x"}'
bad duplicate-field 400 "duplicate" '{"prompts": ["a"], "prompts": ["b"]}'
long_prompt=$(printf 'x%.0s' $(seq 1 40))
bad prompt-over-context 400 "'prompts[1]' is 40 tokens" "{\"prompts\": [\"a\", \"$long_prompt\"]}"
head -c 1100000 /dev/zero | tr '\0' ' ' > "$tmp/big.txt"
bad body-too-large 413 "limit" "@$tmp/big.txt"
bad body-too-large-chunked 413 "limit" "@$tmp/big.txt" -H 'Transfer-Encoding: chunked'
got=$(curl -s --max-time 10 -o "$tmp/get.json" -D "$tmp/get.headers" -w '%{http_code}' "$url")
check "GET /api: 405 with Allow: PUT (got $got)" '[ "$got" = 405 ] && grep -qi "^Allow: PUT" "$tmp/get.headers" && grep -q "\"error\"" "$tmp/get.json"'
got=$(curl -s --max-time 10 -o "$tmp/path.json" -w '%{http_code}' -X PUT "http://127.0.0.1:$port/nowhere" -d '{}')
check "PUT /nowhere: 404 (got $got)" '[ "$got" = 404 ] && grep -q "\"error\"" "$tmp/path.json"'
# raw NAME BYTES: sends BYTES (printf format) on a raw connection; the answer's status line.
raw() {
  /usr/bin/python3 - "$port" "$2" > "$tmp/$1.raw" 2>&1 << 'EOT'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(sys.argv[2].encode().decode("unicode_escape").encode("latin-1"))
answer = b""
while True:
    piece = s.recv(4096)
    if not piece:
        break
    answer += piece
print(answer.decode("latin-1"))
EOT
  head -1 "$tmp/$1.raw" | tr -d '\r'
}
got=$(raw garbage 'GARBAGE\r\n\r\n')
check "a garbage request line: 400 (got $got)" '[ "$got" = "HTTP/1.1 400 Bad Request" ] && grep -q "request line" "$tmp/garbage.raw"'
got=$(raw no-target 'PUT\r\nHost: x\r\n\r\n')
check "a request line without a target: 400 (got $got)" '[ "$got" = "HTTP/1.1 400 Bad Request" ]'
got=$(raw two-lengths 'PUT /api HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{}')
check "two different Content-Length headers: 400 (got $got)" '[ "$got" = "HTTP/1.1 400 Bad Request" ] && grep -q "Content-Length" "$tmp/two-lengths.raw"'
body='{"prompts": ["ab"], "tokens_to_generate": 2, "temperature": 0}'
got=$(raw same-lengths "PUT /api HTTP/1.1\r\nHost: x\r\nContent-Length: ${#body}\r\nContent-Length: ${#body}\r\nConnection: close\r\n\r\n$body")
check "two equal Content-Length headers: 200 (got $got)" '[ "$got" = "HTTP/1.1 200 OK" ]'
check "the server runs on after them" 'kill -0 $server'

status=$(put after-bad '{"prompts": ["still"], "tokens_to_generate": 3, "temperature": 0}')
check "valid request after the bad ones: 200 (got $status)" '[ "$status" = 200 ] && answer_ok after-bad "[\"still\"]" 3 0'

# EE-LLM's client (tools/request_client.py): the JSON it sends for its
# prompt_example.jsonl's second line (the first, 34 bytes, does not fit the context of
# 32) and a short one, as its main() builds it (use_early_exit, early_exit_thres 1.0,
# print_max_prob) and as request()'s defaults do (early_exit_thres 0.8, no
# print_max_prob); tokens_to_generate 24 rather than its 50 or 100, which EE-LLM too
# refuses beyond the model's context (32 here). Greedy (top_k 1): each logprob is the
# log-softmax of the head's logits at its token, the argmax, so exp(logprob) is the
# max probability (not 0, as under the sampling distribution).
# client_ok NAME MAX_PROB: 200's keys and figures.
client_ok() {
  /usr/bin/python3 - "$tmp/$1.json" "$2" > "$tmp/$1.check" 2>&1 << 'EOT'
import json, math, sys
a, max_prob = json.load(open(sys.argv[1])), sys.argv[2] == "1"
want = {"text", "segments", "logprobs", "requst_time", "tokens", "exit_layers"}
assert set(a) == want | ({"max_probs"} if max_prob else set()), sorted(a)
assert isinstance(a["text"][0], str) and len(a["text"]) == 1, a["text"]
gen = len(a["exit_layers"][0])
assert 1 <= gen <= 24 and len(a["segments"][0]) == gen and len(a["tokens"][0]) == gen, a
assert a["text"][0] == "".join(a["segments"][0]) or any(t >= 128 for t in a["tokens"][0])
lp = a["logprobs"][0]
assert len(lp) == gen and all(math.isfinite(x) and x < -1e-3 for x in lp), lp
if max_prob:
    mp = a["max_probs"][0]
    assert len(mp) == gen and all(0 < p <= 1 for p in mp), mp
    for x, p, e in zip(lp, mp, a["exit_layers"][0]):
        assert e == 3, a["exit_layers"][0]  # threshold 1.0: the final head
        assert abs(math.exp(x) - p) <= 1e-5 * p, (x, p)
print("ok")
EOT
  grep -q '^ok' "$tmp/$1.check" || { cat "$tmp/$1.check"; return 1; }
}
for p in "The capital of China is" "AGI is"; do
  n=${#p}
  status=$(put "client-main-$n" "{\"prompts\": [\"$p\"], \"tokens_to_generate\": 24, \"top_k\": 1, \"logprobs\": true, \"random_seed\": 9213, \"echo_prompts\": false, \"early_exit_thres\": 1.0, \"exit_layers\": [], \"use_early_exit\": true, \"print_max_prob\": true}")
  check "request_client.py's main() request for '$p': 200 (got $status), EE-LLM's keys" \
    "[ '$status' = 200 ] && client_ok client-main-$n 1"
  status=$(put "client-default-$n" "{\"prompts\": [\"$p\"], \"tokens_to_generate\": 24, \"top_k\": 1, \"logprobs\": true, \"random_seed\": 9213, \"echo_prompts\": false, \"early_exit_thres\": 0.8, \"exit_layers\": [], \"use_early_exit\": true}")
  check "request_client.py's request() defaults for '$p': 200 (got $status)" \
    "[ '$status' = 200 ] && client_ok client-default-$n 0"
done

# Scoring (tokens_to_generate 0, a single string as prompts, logprobs implied): each
# token's log-probability after the ones before it under the full model, against
# eellm eval's final-head loss on the same tokens (one window of all of them).
score_prompt="the quick brown fox jumps"
status=$(put score "{\"prompts\": \"$score_prompt\", \"tokens_to_generate\": 0}")
check "scoring: 200 (got $status)" '[ "$status" = 200 ]'
/usr/bin/python3 - "$tmp/train.bin" "$tmp/score.bin" "$score_prompt" << 'EOT'
import struct, sys
head = open(sys.argv[1], "rb").read(24)
ids = list(sys.argv[3].encode())
open(sys.argv[2], "wb").write(head + struct.pack("<Q", len(ids)) + struct.pack(f"<{len(ids)}H", *ids))
EOT
"$eellm" eval --ckpt "$tmp/run" --data "$tmp/score.bin" --seq-len $((${#score_prompt} - 1)) --batch 1 \
  --exit-rule maxprob --json "$tmp/score-eval.json" --svg "$tmp/score-eval.svg" > "$tmp/score-eval.out" 2>&1
score_check() {
  /usr/bin/python3 - "$tmp/score.json" "$tmp/score-eval.json" "$score_prompt" << 'EOT'
import json, math, sys
a, ev, p = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
assert set(a) == {"text", "segments", "logprobs", "requst_time", "tokens", "exit_layers"}, sorted(a)
assert a["text"] == [p] and a["segments"] == [list(p)] and a["tokens"] == [list(p.encode())], a
assert a["exit_layers"] == [[]], a["exit_layers"]
lp = a["logprobs"][0]
assert len(lp) == len(p) - 1 and all(math.isfinite(x) and x < 0 for x in lp), lp
final = [e for e in ev["exits"] if e["final"]][0]["loss"]
assert ev["tokens"] == len(p) - 1, ev["tokens"]
mine = -sum(lp) / len(lp)
print(f"scoring: mean -logprob {mine:.6f}, eellm eval final loss {final:.6f}")
assert abs(mine - final) <= 1e-4 * max(1, final), (mine, final)
print("ok")
EOT
}
score_check > "$tmp/score.check" 2>&1
cat "$tmp/score.check"
check "scoring matches eellm eval's final-head loss" 'grep -q "^ok" "$tmp/score.check"'
# The prefix's figures do not change with what follows (causal), and add_BOS prepends
# the end-of-text token (256), which makes an empty prompt scorable.
status=$(put score-bos "{\"prompts\": [\"$score_prompt\", \"\", \"t\"], \"tokens_to_generate\": 0, \"add_BOS\": true, \"logprobs\": false}")
check "scoring with add_BOS: 200 (got $status), the same figures after the BOS one" \
  "[ '$status' = 200 ] && /usr/bin/python3 -c '
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
lp = b[\"logprobs\"]
assert b[\"tokens\"][0][0] == 256 and b[\"tokens\"][1] == [256] and b[\"tokens\"][2] == [256, 116], b[\"tokens\"]
assert len(lp[0]) == len(a[\"logprobs\"][0]) + 1 and lp[1] == [] and len(lp[2]) == 1, lp
' '$tmp/score.json' '$tmp/score-bos.json'"
status=$(put score-one '{"prompts": ["x"], "tokens_to_generate": 0}')
check "scoring a one-token prompt: 200 (got $status), no figures" \
  "[ '$status' = 200 ] && grep -q '\"logprobs\":\\[\\[\\]\\]' '$tmp/score-one.json'"

# stop_sequences: the answer ends with the token that completes the first one found in
# the generated text; stop_on_eol likewise at a newline.
status=$(put nostop '{"prompts": ["the lazy dog"], "tokens_to_generate": 20, "temperature": 0}')
stop=$(/usr/bin/python3 -c '
import json, sys
ids = json.load(open(sys.argv[1]))["tokens"][0]
c = [t for t in ids[1:] if 32 <= t < 127 and chr(t) not in "\"\\"]
print(json.dumps(chr(c[0]) if c else "NONE"))' "$tmp/nostop.json")
echo "stop sequence: $stop"
status=$(put stop "{\"prompts\": [\"the lazy dog\"], \"tokens_to_generate\": 20, \"temperature\": 0, \"stop_sequences\": [\"never there\", $stop]}")
check "stop_sequences $stop: 200 (got $status), the answer cut after it" \
  "[ '$status' = 200 ] && /usr/bin/python3 -c '
import json, sys
full, cut, s = json.load(open(sys.argv[1]))[\"tokens\"][0], json.load(open(sys.argv[2])), sys.argv[3]
ids = cut[\"tokens\"][0]
n = full.index(ord(s)) + 1 if s != \"NONE\" else len(full)
assert ids == full[:n] and len(cut[\"exit_layers\"][0]) == n, (full, ids, s)
' '$tmp/nostop.json' '$tmp/stop.json' $stop"
status=$(put eol '{"prompts": ["the lazy dog"], "tokens_to_generate": 20, "temperature": 0, "stop_on_eol": true}')
check "stop_on_eol: 200 (got $status), no newline but at the end" \
  "[ '$status' = 200 ] && /usr/bin/python3 -c '
import json, sys
ids = json.load(open(sys.argv[1]))[\"tokens\"][0]
assert 10 not in ids[:-1], ids
' '$tmp/eol.json'"

# Accepted without effect here: top_p 0 (EE-LLM's off), a top_p_decay held by a
# top_p_bound equal to top_p, length_penalty (beam search only); no_log keeps the
# request out of the server's log.
logged=$(grep -c "eellm serve: 200" "$tmp/log")
status=$(put no-effect '{"prompts": ["dog"], "tokens_to_generate": 4, "top_p": 0, "length_penalty": 1.5, "no_log": true, "prevent_newline_after_colon": false}')
check "top_p 0, length_penalty, no_log: 200 (got $status), not logged" \
  "[ '$status' = 200 ] && answer_ok no-effect '[\"dog\"]' 4 0 && [ \$(grep -c 'eellm serve: 200' '$tmp/log') = $logged ]"
status=$(put decay-held '{"prompts": ["dog"], "tokens_to_generate": 4, "top_p": 0.9, "top_p_decay": 0.5, "top_p_bound": 0.9}')
check "top_p_decay held by top_p_bound = top_p: 200 (got $status)" "[ '$status' = 200 ]"

# top_p_decay with a bound below 1 / vocabulary: after the first token, a nucleus of one,
# so each token is its head's argmax (exp(logprob) = max_prob); without the decay some
# are not (a two-step model is nearly uniform).
# argmax_after_first NAME: how many tokens after the first are not the argmax.
argmax_after_first() {
  /usr/bin/python3 -c '
import json, math, sys
a = json.load(open(sys.argv[1]))
print(sum(abs(math.exp(x) - p) > 1e-5 * p for lp, mp in zip(a["logprobs"], a["max_probs"])
          for x, p in list(zip(lp, mp))[1:]))' "$tmp/$1.json"
}
decay='"prompts": ["dog", "fox"], "tokens_to_generate": 12, "temperature": 1, "top_p": 0.95, "random_seed": 5, "logprobs": true, "print_max_prob": true'
status=$(put decay "{$decay, \"top_p_decay\": 0.001, \"top_p_bound\": 0.0001}")
put no-decay "{$decay}" > /dev/null
check "top_p_decay 0.001, top_p_bound 1e-4: 200 (got $status), the argmax after the first token ($(argmax_after_first decay) not; without the decay $(argmax_after_first no-decay) not)" \
  "[ '$status' = 200 ] && [ \$(argmax_after_first decay) = 0 ] && [ \$(argmax_after_first no-decay) -gt 0 ]"

# prevent_newline_after_colon: no newline (10) right after ':' (58), greedy and sampled.
status=$(put colon '{"prompts": ["note:", "a: b:", ":"], "tokens_to_generate": 20, "temperature": 2, "random_seed": 1, "prevent_newline_after_colon": true}')
check "prevent_newline_after_colon: 200 (got $status), no newline after ':'" \
  "[ '$status' = 200 ] && /usr/bin/python3 -c '
import json, sys
for p, ids in zip([\"note:\", \"a: b:\", \":\"], json.load(open(sys.argv[1]))[\"tokens\"]):
    seq = list(p.encode()) + ids
    assert all(not (x == 58 and y == 10) for x, y in zip(seq, seq[1:])), seq
' '$tmp/colon.json'"

# Speculative decoding: greedy, the full model's tokens (exits off), whatever the draft
# exit and draft count, with several such requests batched together and beside others.
spec_prompts='["the quick", "lazy dog", "fox"]'
status=$(put full "{\"prompts\": $spec_prompts, \"tokens_to_generate\": 16, \"temperature\": 0}")
check "full-depth greedy: 200 (got $status)" "[ '$status' = 200 ]"
spec_pids=()
for d in 1 2; do
  for n in 1 3; do
    put "spec-$d-$n" "{\"prompts\": $spec_prompts, \"tokens_to_generate\": 16, \"temperature\": 0, \"method\": \"speculative\", \"draft_exit\": $d, \"draft_tokens\": $n}" > "$tmp/spec-$d-$n.status" &
    spec_pids+=($!)
  done
done
put spec-beside '{"prompts": ["number 1", "fox 2"], "tokens_to_generate": 5, "temperature": 0, "use_early_exit": true, "early_exit_thres": 0.001}' > "$tmp/spec-beside.status" &
spec_pids+=($!)
wait "${spec_pids[@]}"
for d in 1 2; do
  for n in 1 3; do
    got=$(cat "$tmp/spec-$d-$n.status")
    check "speculative, draft_exit $d, draft_tokens $n: 200 (got $got), the full model's tokens" \
      "[ '$got' = 200 ] && answer_ok spec-$d-$n '$spec_prompts' 16 0 3 && /usr/bin/python3 -c '
import json, sys
full, spec = (json.load(open(f)) for f in sys.argv[1:])
assert spec[\"tokens\"] == full[\"tokens\"] and spec[\"text\"] == full[\"text\"], (spec, full)
' '$tmp/full.json' '$tmp/spec-$d-$n.json'"
  done
done
check "an early-exit request beside them: 200" \
  "[ \$(cat '$tmp/spec-beside.status') = 200 ] && answer_ok spec-beside '[\"number 1\", \"fox 2\"]' 5 0 1"
status=$(put spec-sampled '{"prompts": ["dog", "fox"], "tokens_to_generate": 10, "temperature": 1.5, "top_k": 50, "random_seed": 42, "method": "speculative", "draft_exit": 2}')
check "speculative sampling: 200 (got $status)" \
  "[ '$status' = 200 ] && answer_ok spec-sampled '[\"dog\", \"fox\"]' 10 0 3"

# Long generations: 8 sampled requests with their own seeds, 1024 prompts each,
# 2 at a time each (the per-request cap of --max-batch 4). Meanwhile a bad request
# is answered.
prompts=$(printf '"x",%.0s' $(seq 1 1023))'"x"'
long_pids=()
for i in 1 2 3 4 5 6 7 8; do
  put "long$i" "{\"prompts\": [$prompts], \"tokens_to_generate\": 31, \"random_seed\": $i}" > "$tmp/long$i.status" &
  long_pids+=($!)
done
sleep 0.3
status=$(put during-long '{"prompts": ["a"], "top_p": 2}')
running=0
for pid in "${long_pids[@]}"; do kill -0 $pid 2> /dev/null && running=$((running + 1)); done
check "a bad request while long generations run ($running of 8 unanswered): 400 (got $status)" \
  '[ "$status" = 400 ] && [ $running -gt 0 ]'

# SIGTERM: the running prompts finish, requests with prompts left get 503, the server exits 0.
kill -TERM $server
( sleep 60; kill -KILL $server ) > /dev/null 2>&1 &
watchdog=$!
wait $server
status=$?
kill $watchdog 2> /dev/null
server=""
check "SIGTERM: exit status 0 (got $status)" '[ $status -eq 0 ]'
check "SIGTERM says it stops" 'grep -q "stopping" "$tmp/log"'
wait "${long_pids[@]}"
codes="" others=0
for i in 1 2 3 4 5 6 7 8; do
  code=$(cat "$tmp/long$i.status")
  codes="$codes $code"
  [ "$code" = 200 ] || [ "$code" = 503 ] || others=$((others + 1))
done
check "long requests after SIGTERM: 200 or 503, one 503 at least (got$codes)" \
  '[ $others -eq 0 ] && grep -q "shutting down" "$tmp"/long*.json'

# A vocabulary padded past the tokenizer's (300 ids, byte tokenizer 257): sampled from a
# two-step model, ids past 256 come up; they are answered with no text, as eellm generate
# prints them.
sed 's/^vocab_size: 257/vocab_size: 300/' tests/specs/tiny.txtpb > "$tmp/padded.txtpb"
"$eellm" train --model "$tmp/padded.txtpb" --train tests/specs/tiny.train.txtpb \
  --data "$tmp/train.bin" --steps 2 --out "$tmp/padded" > /dev/null 2>&1
"$eellm" serve --ckpt "$tmp/padded" --host 127.0.0.1 --port 0 > "$tmp/out" 2> "$tmp/log" &
server=$!
port=$(server_port "$tmp/out" 10)
url=http://127.0.0.1:$port/api
status=$(put padded '{"prompts": ["the", "dog"], "tokens_to_generate": 24, "temperature": 2, "random_seed": 7}')
check "a padded vocabulary: 200 (got $status), ids past the tokenizer's with empty segments" \
  "[ '$status' = 200 ] && /usr/bin/python3 -c '
import json, sys
a = json.load(open(sys.argv[1]))
past = [(t, s) for ts, ss in zip(a[\"tokens\"], a[\"segments\"]) for t, s in zip(ts, ss) if t > 256]
assert past and all(s == \"\" for t, s in past), past
assert len(a[\"text\"]) == 2 and all(0 < len(ts) <= 24 for ts in a[\"tokens\"])
' '$tmp/padded.json'"
kill -TERM $server
wait $server
server=""
finish serve_cli
