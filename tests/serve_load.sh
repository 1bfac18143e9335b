#!/usr/bin/env bash
# eellm serve under load, from other processes on loopback, every phase bounded:
# - slow clients: 70 connections (35 from 127.0.0.2 with their request line sent,
#   35 from 127.0.1.x without) sending a header byte every 2 s for 12 s; meanwhile a
#   normal client gets all 30 answers; the server closes the trickling connections
#   (header timeout 3 s: before MHD for request lines, in MHD for the rest) and
#   refuses those over the per-address limit;
# - one request of 1024 prompts beside a 4-token request: the small one finishes
#   first, within a few seconds;
# - wrk (4 connections, 8 s, PUT /api) alone, then beside the slow clients and a
#   large request: no error or non-2xx answer, flat memory; prints requests,
#   errors, p50/p99 latency and the server's peak RSS (VmHWM) for both.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 STARPU_NCPU=${STARPU_NCPU:-2}
client="/usr/bin/python3 $(dirname "$0")/serve_load_client.py"

byte_corpus 3 40
"$eellm" train --model tests/specs/tiny.txtpb --train tests/specs/tiny.train.txtpb \
  --data "$tmp/train.bin" --steps 2 --out "$tmp/run" > /dev/null 2>&1
"$eellm" serve --ckpt "$tmp/run" --port 0 --max-batch 4 --header-timeout 3 > "$tmp/out" 2> "$tmp/log" &
server=$!
port=$(server_port "$tmp/out" 10)
check "the server says where it listens" '[ -n "$port" ]'
[ -n "$port" ] || { cat "$tmp/log"; finish serve_load; exit; }
url=http://127.0.0.1:$port/api
check "the server says its per-request cap" 'grep -q "max batch 4, 2 per request" "$tmp/out"'
vm() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" /proc/$server/status; }
small='{"prompts": ["the"], "tokens_to_generate": 4, "temperature": 0}'
prompts=$(printf '"x",%.0s' $(seq 1 1023))'"x"'
big="{\"prompts\": [$prompts], \"tokens_to_generate\": 16, \"temperature\": 0}"
curl -s -o /dev/null --max-time 20 -X PUT "$url" -d "$small"

# Slow clients beside a normal one.
$client slow "$port" 12 35 35 > "$tmp/slow" 2>&1 &
slow=$!
sleep 1
$client normal "$port" 30 > "$tmp/normal" 2>&1
wait $slow
echo "slow clients: $(cat "$tmp/slow"); $(cat "$tmp/normal")"
check "a normal client beside 70 slow ones: 30 of 30 answered ($(cat "$tmp/normal"))" \
  'grep -q "normal ok=30 of=30" "$tmp/normal"'
check "slow connections closed by the server ($(cat "$tmp/slow"))" \
  '[ "$(sed -n "s/.*closed_by_server=\([0-9]*\).*/\1/p" "$tmp/slow")" -ge 70 ] && grep -q "closed .* slow connections (header over" "$tmp/log" && grep -q "closed .* slow connections (request line over" "$tmp/log"'

# A huge request beside a small one: the small one is answered first.
curl -s -o "$tmp/big.json" -w '%{http_code}' --max-time 60 -X PUT "$url" -d "$big" > "$tmp/big.status" &
big_pid=$!
sleep 0.3
start=$(date +%s.%N)
status=$(curl -s -o "$tmp/small.json" -w '%{http_code}' --max-time 60 -X PUT "$url" -d "$small")
small_s=$(echo "$(date +%s.%N) - $start" | bc)
kill -0 $big_pid 2> /dev/null
big_running=$?
wait $big_pid
echo "beside 1024 prompts: a 4-token request took $small_s s; the large one: $(cat "$tmp/big.status")"
check "a small request beside 1024 prompts: 200 in $small_s s, before the large one" \
  '[ "$status" = 200 ] && [ $big_running -eq 0 ] && [ "$(echo "$small_s < 5" | bc)" = 1 ]'
check "the large request: 200" '[ "$(cat "$tmp/big.status")" = 200 ]'

# load NAME: wrk for 8 s; its summary line in $tmp/NAME.load, RSS samples in $tmp/NAME.rss.
load() {
  ( for _ in $(seq 1 9); do vm VmRSS; sleep 1; done ) > "$tmp/$1.rss" &
  local sampler=$!
  timeout 30 wrk -t 1 -c 4 -d 8s --timeout 10s -s "$(dirname "$0")/serve_load.lua" "$url" \
    > "$tmp/$1.wrk" 2>&1
  wait $sampler
  grep '^LOAD' "$tmp/$1.wrk" > "$tmp/$1.load" || cat "$tmp/$1.wrk"
  echo "$1: $(cat "$tmp/$1.load") peak_rss_kb=$(vm VmHWM) rss_kb=$(tr '\n' ' ' < "$tmp/$1.rss")"
}
# no_errors NAME: requests made, none failed.
no_errors() {
  grep -q 'errors=0 non2xx=0' "$tmp/$1.load" &&
    [ "$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' "$tmp/$1.load")" -gt 0 ]
}
if command -v wrk > /dev/null; then
  load alone
  check "wrk alone: no errors ($(cat "$tmp/alone.load"))" no_errors alone
  # Flat memory: the last samples no higher than the first ones plus 8 MiB. Not
  # under AddressSanitizer (make asan), whose quarantine keeps freed memory
  # resident and grows by design.
  first=$(head -3 "$tmp/alone.rss" | sort -n | tail -1) last=$(tail -3 "$tmp/alone.rss" | sort -n | tail -1)
  if nm "$eellm" 2>/dev/null | grep -q __asan_init; then
    echo "wrk alone: RSS $first kB, then $last kB (not checked: ASan build)"
  else
    check "wrk alone: flat memory (RSS $first kB, then $last kB)" '[ $((last - first)) -lt 8192 ]'
  fi
  $client slow "$port" 9 35 35 > "$tmp/slow2" 2>&1 &
  slow=$!
  curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 300 -X PUT "$url" -d "$big" > "$tmp/big2.status" &
  big_pid=$!
  load beside
  wait $slow $big_pid
  check "wrk beside slow clients and 1024 prompts: no errors ($(cat "$tmp/beside.load"))" no_errors beside
  check "wrk beside: p99 under 5 s" \
    '[ "$(echo "$(sed -n "s/.*p99_ms=\([0-9.]*\).*/\1/p" "$tmp/beside.load") < 5000" | bc)" = 1 ]'
  read -r big2_status big2_s < "$tmp/big2.status"
  check "the large request beside wrk: 200 (got $big2_status after $big2_s s)" '[ "$big2_status" = 200 ]'
  echo "after: $(vm VmRSS) kB resident, peak $(vm VmHWM) kB; the large request beside wrk: $big2_status in $big2_s s"
else
  echo "serve_load: wrk is not installed (scripts/install-deps): the load phases are skipped"
fi

kill -TERM $server
wait $server
status=$?
server=""
check "SIGTERM: exit status 0 (got $status)" '[ $status -eq 0 ]'
finish serve_load
