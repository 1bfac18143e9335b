#!/usr/bin/env bash
# `eellm plot` on synthetic runs: the SVG is well-formed XML with, per exit, a
# raw and a smoothed training line, a validation line and one dot per
# evaluation; the legend names the exits (generic, from model.txtpb, or
# --labels, escaped) with the final validation loss of the last line logged for
# a step; an early loss spike is clipped, thinned long runs keep their spikes;
# bad lines are skipped with warnings; errors give one line and status 2.
set -u
build=${1:-build}
eellm="$build/eellm"
py=/usr/bin/python3
. "$(dirname "$0")/lib.sh"

# metrics STEPS VAL_EVERY SPIKE: 3 exits, loss falling from ~10 (SPIKE=1) or
# flat-ish (SPIKE=0), validation every VAL_EVERY steps, deterministic noise.
metrics() {
  "$py" - "$@" <<'EOF'
import json, math, sys
steps, val_every, spike = map(int, sys.argv[1:])
bases = [3.4, 3.1, 2.85]
def line(s, val_offset=0.05):
    loss = [b + spike * 7 * math.exp(-s / 8) + 0.3 * math.exp(-s / 100) + 0.04 * math.sin(s * (k + 1.7))
            for k, b in enumerate(bases)]
    d = {"step": s, "lr": 6e-4, "grad_norm": 0.9, "tokens_per_s": 1e4, "elapsed_s": s / 10,
         "loss": loss, "exit_weights": [0.25, 0.5, 1.0]}
    if s % val_every == 0:
        d["val_loss"] = [b + spike * 7 * math.exp(-s / 8) + 0.3 * math.exp(-s / 100) + val_offset
                         for b in bases]
    return json.dumps(d)
for s in range(1, steps + 1):
    print(line(s))
EOF
}

# svg_facts FILE: parses FILE (well-formedness) and prints what was drawn.
svg_facts() {
  PYTHONIOENCODING=utf-8 "$py" - "$1" <<'EOF'
import sys, xml.dom.minidom
doc = xml.dom.minidom.parse(sys.argv[1])
def cls(e): return e.getAttribute("class").split()
def text(e): return "".join(n.data for n in e.childNodes if n.nodeType == n.TEXT_NODE)
def points(e): return [tuple(map(float, p.split(","))) for p in e.getAttribute("points").split()]
for g in doc.getElementsByTagName("g"):
    if "exit" not in cls(g): continue
    lines = g.getElementsByTagName("polyline")
    count = lambda c: sum(c in cls(l) for l in lines)
    dots = sum(len(d.getElementsByTagName("circle")) for d in g.getElementsByTagName("g"))
    raw = [l for l in lines if "train-raw" in cls(l)]
    print(f"{cls(g)[1]}: train-raw {count('train-raw')}, train {count('train')}, val {count('val')}, dots {dots}")
    if raw:
        pts = points(raw[0])
        print(f"{cls(g)[1]} raw points {len(pts)}, late top {min(y for x, y in pts if x > 400):.0f}")
texts = doc.getElementsByTagName("text")
labels = [text(t) for t in texts if "legend-label" in cls(t)]
values = [text(t) for t in texts if "legend-value" in cls(t)]
for l, v in zip(labels, values): print(f"legend: {l} = {v}")
for t in texts:
    if "title" in cls(t): print("title:", text(t))
    if "clip-note" in cls(t): print("clip note:", text(t))
    if text(t) in ("step", "loss (nats/token)"): print("axis:", text(t))
ticks = [float(text(t)) for t in texts if t.getAttribute("text-anchor") == "end"
         and text(t).replace(".", "").isdigit() and float(t.getAttribute("x")) < 72]
print(f"y ticks: {min(ticks)}..{max(ticks)}")
EOF
}

has() { grep -qxF "$2" "$1"; }

# ---- a run with a spike, a resume that re-logged steps 151-160, and bad lines
run="$tmp/run-7"
mkdir "$run"
metrics 200 50 1 > "$tmp/all"
{
  head -n 160 "$tmp/all"
  echo '[1, 2, 3]'
  echo
  # step 200's first line: a validation loss the later line replaces
  sed -n '200p' "$tmp/all" | sed 's/"val_loss": \[[^]]*\]/"val_loss": [9.5, 9.5, 9.5]/'
  sed -n '151,200p' "$tmp/all"
  printf '{"step": 201, "loss": [2.9, 2.8'
} > "$run/metrics.jsonl"

"$eellm" plot "$run" > "$tmp/stdout" 2> "$tmp/stderr"
status=$?
check "plot exits 0" test $status -eq 0
check "writes RUN/loss.svg" test -s "$run/loss.svg"
check "no temp file left" test "$(ls "$run")" = "$(printf 'loss.svg\nmetrics.jsonl')"
check "well-formed XML" "$py" -c "import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])" "$run/loss.svg"
check "two bad lines warned about" test "$(grep -c 'metrics.jsonl:[0-9]*: line skipped' "$tmp/stderr")" -eq 2
check "truncated last line named" grep -q 'metrics.jsonl:214: line skipped' "$tmp/stderr"
svg_facts "$run/loss.svg" > "$tmp/facts" || fail "svg facts"
for k in 0 1 2; do
  check "exit $k: raw and EMA train lines, a val line, 4 dots" has "$tmp/facts" "exit-$k: train-raw 1, train 1, val 1, dots 4"
  check "exit $k: one point per step, repeated steps once" grep -q "^exit-$k raw points 200," "$tmp/facts"
done
# step 200's validation loss: base + 0.3 exp(-2) + 0.05 (the spike has decayed)
check "legend exit 0, last line of step 200 wins" has "$tmp/facts" "legend: exit 0 = 3.491"
check "legend exit 1" has "$tmp/facts" "legend: exit 1 = 3.191"
check "legend final" has "$tmp/facts" "legend: final = 2.941"
check "title is the run directory" has "$tmp/facts" "title: run-7"
check "axis labels" test "$(grep -c '^axis:' "$tmp/facts")" -eq 2
check "spike clipped and noted" grep -q '^clip note: .* values above' "$tmp/facts"
ymax=$(sed -n 's/^y ticks: .*\.\.//p' "$tmp/facts")
check "y range not squashed by the spike (top tick $ymax)" "$py" -c "import sys; sys.exit(not 3.5 < $ymax < 4.5)"

if command -v rsvg-convert > /dev/null; then
  check "renders to PNG" rsvg-convert "$run/loss.svg" -o "$tmp/loss.png"
  check "PNG is not trivial" test "$(stat -c %s "$tmp/loss.png")" -gt 20000
else
  echo "rsvg-convert not found: PNG render skipped"
fi

# ---- labels from the run's model spec (exits after layers 2 and 4 of 6)
cp examples/default.txtpb "$run/model.txtpb"
"$eellm" plot "$run" > /dev/null 2>&1
svg_facts "$run/loss.svg" > "$tmp/facts"
check "spec label exit 0" grep -qx "legend: exit 0 (layer 2) = 3.491" "$tmp/facts"
check "spec label exit 1" grep -qx "legend: exit 1 (layer 4) = 3.191" "$tmp/facts"
check "spec label final" grep -qx "legend: final (layer 6) = 2.941" "$tmp/facts"

# ---- --labels: escaped, invalid UTF-8 replaced, -o elsewhere
"$eellm" plot "$run" -o "$tmp/custom.svg" --labels $'a<b & "c",d\xff>,final \xc3\xbc' > /dev/null 2>&1
status=$?
check "custom labels: status 0" test $status -eq 0
svg_facts "$tmp/custom.svg" > "$tmp/facts" || fail "custom labels: well-formed"
check "custom label with markup" has "$tmp/facts" 'legend: a<b & "c" = 3.491'
check "custom label with a bad byte" has "$tmp/facts" $'legend: d\xef\xbf\xbd> = 3.191'
check "custom label in UTF-8" has "$tmp/facts" $'legend: final \xc3\xbc = 2.941'

# ---- no spike: nothing clipped; no validation: legend has the last training loss
flat="$tmp/flat"
mkdir "$flat"
metrics 40 1000 0 > "$flat/metrics.jsonl"
"$eellm" plot "$flat" > /dev/null 2>&1
svg_facts "$flat/loss.svg" > "$tmp/facts"
check "flat: nothing clipped" test "$(grep -c '^clip note' "$tmp/facts")" -eq 0
check "flat: short run unsmoothed, no val" has "$tmp/facts" "exit-0: train-raw 0, train 1, val 0, dots 0"
last_train=$("$py" -c "import json,sys; print('%.3f' % json.loads(open(sys.argv[1]).readlines()[-1])['loss'][2])" "$flat/metrics.jsonl")
check "flat: legend shows last training loss" has "$tmp/facts" "legend: final = $last_train"

# ---- a long run is thinned to at most two points per pixel column, spikes kept
long="$tmp/long"
mkdir "$long"
metrics 20000 1000 1 | sed '15000s/"loss": \[[^,]*/"loss": [30.0/' > "$long/metrics.jsonl"
"$eellm" plot "$long" > /dev/null 2>&1
svg_facts "$long/loss.svg" > "$tmp/facts"
raw=$(sed -n 's/^exit-0 raw points \([0-9]*\), late top \(-\?[0-9]*\)$/\1 \2/p' "$tmp/facts")
check "long: thinned ($raw)" test "${raw% *}" -le 1160 -a "${raw% *}" -ge 500
check "long: the spike at step 15000 survives" test "${raw#* }" -lt 52

# ---- errors: status 2, one line on stderr
expect_error "missing run dir" "nosuch: no such run directory" "$eellm" plot "$tmp/nosuch"
mkdir "$tmp/empty"
expect_error "missing metrics.jsonl" "empty/metrics.jsonl: cannot read \(No such file" "$eellm" plot "$tmp/empty"
mkdir "$tmp/garbage"
printf 'not json\n' > "$tmp/garbage/metrics.jsonl"
"$eellm" plot "$tmp/garbage" > /dev/null 2> "$tmp/stderr"
status=$?
check "only garbage: status 2" test $status -eq 2
check "only garbage: warning and error" grep -q 'garbage/metrics.jsonl: no valid metrics line' "$tmp/stderr"
expect_error "unwritable output" "nodir/x.svg: cannot write \(No such file" "$eellm" plot "$flat" -o "$tmp/nodir/x.svg"
expect_error "output is a directory" "cannot write \(Is a directory\)" "$eellm" plot "$flat" -o "$tmp/empty"
check "no temp file left after a failed write" test -z "$(ls "$tmp" | grep '\.tmp\.')"
expect_error "label count" "2 labels given for 3 exits" "$eellm" plot "$flat" --labels "a,b"
"$eellm" plot > /dev/null 2>&1
status=$?
check "no run dir: status 2" test $status -eq 2
"$eellm" plot --help > "$tmp/help"
status=$?
check "--help: status 0" test $status -eq 0
check "--help: usage" grep -q '^usage: eellm plot RUN_DIR' "$tmp/help"

finish plot_cli
