#!/usr/bin/env bash
# eellm train --trace on a tiny model, two steps: the Chrome trace holds every
# task StarPU ran (counted by StarPU itself), with sane times, kinds, workers,
# micro-batches and layers; the Paje version passes pajeng's pj_dump; the HTML
# report draws every task in headless Chromium without a console error and
# makes a screenshot; the summary prints its tables; Ctrl-C still writes the
# trace; two pipeline ranks write a file each, read together; two data-parallel
# ranks' collectives are counted per rank; bad --trace arguments get one line
# and status 2.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
export STARPU_SILENT=1 STARPU_NCPU=${STARPU_NCPU:-2}

model=tests/specs/tiny.txtpb
train=tests/specs/tiny.train.txtpb
byte_corpus 3 60 0.2
run() { "$eellm" train --model $model --train $train --data "$tmp/train.bin" --val "$tmp/val.bin" --steps 2 "$@"; }

# Two steps, then validation (tasks outside the steps).
run --out "$tmp/run" --trace "$tmp/trace.json" > "$tmp/train.log" 2>&1
status=$?
check "traced run exits 0" '[ $status -eq 0 ]'
tasks=$(sed -n 's/^trace: \([0-9]*\) tasks in .*/\1/p' "$tmp/train.log")
check "the run says how many tasks it traced ($tasks)" '[ -n "$tasks" ] && [ "$tasks" -gt 0 ]'

/usr/bin/python3 - "$tmp/trace.json" "$tmp/run/checkpoint.safetensors" > "$tmp/json.check" 2>&1 <<'EOT'
import json, struct, sys
from collections import Counter
trace = json.load(open(sys.argv[1]))
with open(sys.argv[2], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
n_tensors = len([k for k in header if k != "__metadata__" and not k.startswith("optimizer.")])
workers = {w["id"]: w for w in trace["otherData"]["workers"]}
meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
tasks = [e for e in trace["traceEvents"] if e["ph"] == "X"]
kinds = {"forward", "backward", "exit", "loss", "optimizer", "collective", "transfer", "other"}
problems = []
def expect(cond, what):
    if not cond: problems.append(what)

expect({(e["name"], e["args"]["name"]) for e in meta if e["name"] == "process_name"} == {("process_name", "rank 0")}, "process rank 0")
names = {e["tid"]: e["args"]["name"] for e in meta if e["name"] == "thread_name"}
expect(names == {w: workers[w]["name"] for w in workers} and all(n.startswith("CPU ") for n in names.values()), f"thread names {names}")
for e in tasks:
    a = e["args"]
    expect(e["pid"] == 0 and e["tid"] in workers, f"{e['name']}: pid/tid")
    expect(e["cat"] == a["kind"] and a["kind"] in kinds, f"{e['name']}: kind {a['kind']}")
    expect(0 <= a["submit_us"] <= e["ts"] + 1e-3 and e["dur"] >= 0, f"{e['name']}: times")
    expect(a["step"] in (-1, 1, 2), f"{e['name']}: step {a['step']}")
# StarPU's own counters: every task it ran on a worker is in the trace, and busy times agree.
for w, info in workers.items():
    mine = sorted((e for e in tasks if e["tid"] == w), key=lambda e: e["ts"])
    expect(len(mine) == info["starpu_executed_tasks"], f"worker {w}: {len(mine)} tasks, StarPU ran {info['starpu_executed_tasks']}")
    busy = sum(e["dur"] for e in mine)
    expect(abs(busy - info["starpu_executing_us"]) <= 0.02 * busy + 50, f"worker {w}: busy {busy:.1f} us, StarPU says {info['starpu_executing_us']:.1f}")
    overlaps = sum(1 for p, q in zip(mine, mine[1:]) if q["ts"] < p["ts"] + p["dur"] - 1e-3)
    expect(overlaps == 0, f"worker {w}: {overlaps} overlapping tasks")
# Every step: each micro-batch's layers forward and backward, both exits, the three losses
# (one task each per slice: its 2 sequences run as one slice per worker), and one zero, sumsq
# and adamw per trainable tensor.
slices = min(len(workers), 2)
for step in (1, 2):
    mine = [e["args"] | {"name": e["name"]} for e in tasks if e["args"]["step"] == step]
    for micro in (0, 1):
        m = [a for a in mine if a["micro"] == micro]
        for kind in ("forward", "backward"):
            expect({a["layer"] for a in m if a["kind"] == kind} >= {0, 1, 2}, f"step {step} micro {micro}: {kind} layers")
        expect({a["exit"] for a in m if a["kind"] == "exit"} == {0, 1}, f"step {step} micro {micro}: exits")
        losses = Counter((a["exit"], a["layer"]) for a in m if a["kind"] == "loss")
        expect(losses == Counter({(0, -1): slices, (1, -1): slices, (-1, 3): slices}), f"step {step} micro {micro}: losses {losses}")
    per_name = Counter(a["name"] for a in mine)
    expect(per_name["adamw"] == per_name["zero"] == per_name["sumsq"] == n_tensors, f"step {step}: optimizer tasks {per_name}")
expect(Counter(e["name"] for e in tasks if e["args"]["step"] == 1) == Counter(e["name"] for e in tasks if e["args"]["step"] == 2), "both steps run the same tasks")
expect(any(e["args"]["step"] == -1 for e in tasks), "validation tasks, outside the steps")
print("\n".join(problems[:10]) if problems else f"ok {len(tasks)}")
EOT
check "trace JSON: every task with sane fields ($(head -3 "$tmp/json.check" | tr '\n' ' '))" 'grep -q "^ok $tasks$" "$tmp/json.check"'

# Paje: the same run's tasks, valid for pajeng.
run --out "$tmp/run-paje" --trace "$tmp/trace.paje" --trace-format paje > "$tmp/paje.log" 2>&1
status=$?
check "paje run exits 0" '[ $status -eq 0 ]'
pj_dump "$tmp/trace.paje" > "$tmp/paje.dump" 2> "$tmp/paje.err"
status=$?
check "pj_dump accepts the Paje trace ($(head -c 200 "$tmp/paje.err"))" '[ $status -eq 0 ] && [ ! -s "$tmp/paje.err" ]'
states=$(grep -c '^State, ' "$tmp/paje.dump")
check "pj_dump: one state per task ($states, $tasks)" '[ "$states" -eq "$tasks" ]'
check "pj_dump: a rank and its workers" 'grep -q "^Container, 0, Rank, .*rank 0$" "$tmp/paje.dump" && grep -q "^Container, rank 0, Worker, .*CPU 0$" "$tmp/paje.dump"'

# The HTML report, rendered by headless Chromium.
"$eellm" trace report "$tmp/trace.json" -o "$tmp/report.html" > /dev/null
check "report written" '[ -s "$tmp/report.html" ]'
check "report is self-contained (no URL)" '! grep -qE "(src|href)=|https?://" "$tmp/report.html"'
check "report: time per op with GFLOP/s" 'grep -q "<h2>Time per op</h2>" "$tmp/report.html" && grep -Eq "<tr><td>linear_fwd</td>(<td>[^<]*</td>){5}<td>[0-9.]+</td></tr>" "$tmp/report.html"'
scripts/trace-screenshot --dom "$tmp/report.html" > "$tmp/dom.html"
status=$(grep -o '<p id="render-status"[^>]*>' "$tmp/dom.html")
check "Chromium drew every task ($status)" 'echo "$status" | grep -q "data-bars=\"$tasks\""'
check "no console error ($(grep -o 'id="render-status"[^<]*' "$tmp/dom.html" | head -c 300))" 'echo "$status" | grep -q "data-errors=\"0\""'
scripts/trace-screenshot "$tmp/report.html" "$tmp/report.png"
check "screenshot is a PNG" '[ "$(head -c 8 "$tmp/report.png" | od -An -tx1 | tr -d " \n")" = 89504e470d0a1a0a ]'

# The summary.
"$eellm" trace summary "$tmp/trace.json" > "$tmp/summary.txt"
status=$?
check "summary exits 0" '[ $status -eq 0 ]'
check "summary counts the tasks" 'grep -q "^trace .*: 1 rank, 2 workers, 2 steps, $tasks tasks" "$tmp/summary.txt"'
check "summary tables" 'grep -q "^rank 0 CPU 0 " "$tmp/summary.txt" && grep -q "^backward " "$tmp/summary.txt" && grep -q "^critical path: " "$tmp/summary.txt" && grep -q "^exit work: .* hidden" "$tmp/summary.txt"'
# The op table: every task of the steps under its name, the ops' tasks adding up to the kinds'.
op_tasks=$(awk '/^op /{on=1; next} on && NF == 0 {exit} on {n += $2} END {print n + 0}' "$tmp/summary.txt")
kind_tasks=$(awk '/^kind /{on=1; next} on && NF == 0 {exit} on {n += $2} END {print n + 0}' "$tmp/summary.txt")
check "summary: time per op, its tasks those of the kinds ($op_tasks, $kind_tasks)" 'grep -q "^linear_dw " "$tmp/summary.txt" && [ "$op_tasks" -gt 0 ] && [ "$op_tasks" -eq "$kind_tasks" ]'
# GFLOP/s (the last column) for the products and attention, whose tasks count FLOPs, and
# "-" for the ops that do not; the report's op table the same.
rates=$(awk '/^op /{on=1; next} on && NF == 0 {exit} on && $1 ~ /^(linear_fwd|linear_dw|attention_bwd|adamw)$/ {printf "%s=%s ", $1, $NF}' "$tmp/summary.txt")
check "summary: GFLOP/s of the counted ops, - for others ($rates)" \
  'echo "$rates" | grep -Eq "linear_fwd=[0-9.]+ " && echo "$rates" | grep -Eq "attention_bwd=[0-9.]+ " && echo "$rates" | grep -q "adamw=- "'

# Ctrl-C: the run stops cleanly and the trace holds the steps done.
cat > "$tmp/long.train.txtpb" <<EOT
$(grep -v '^steps:' $train)
steps: 400
EOT
"$eellm" train --model $model --train "$tmp/long.train.txtpb" --data "$tmp/train.bin" --out "$tmp/long" --trace "$tmp/int.json" > "$tmp/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do [ -s "$tmp/long/metrics.jsonl" ] && break; sleep 0.05; done
kill -INT $pid
wait $pid
status=$?
done_steps=$(wc -l < "$tmp/long/metrics.jsonl")
check "SIGINT exits 0 (got $status)" '[ $status -eq 0 ]'
last=$(/usr/bin/python3 -c 'import json, sys; print(max(e["args"]["step"] for e in json.load(open(sys.argv[1]))["traceEvents"] if e["ph"] == "X"))' "$tmp/int.json" 2>&1)
check "trace written on SIGINT, up to the last step done ($last of $done_steps)" '[ "$last" = "$done_steps" ]'

# Two pipeline stages on two MPI ranks: a file per rank, read together.
{ grep -v '^steps:' $train; echo "parallelism { pp: 2 }"; } > "$tmp/pp2.train.txtpb"
env -u STARPU_NCPU EELLM_STARPU_HOME="$tmp/starpu" timeout 300 scripts/eellm-mpirun 2 "$eellm" train --model $model \
  --train "$tmp/pp2.train.txtpb" --data "$tmp/train.bin" --out "$tmp/pp" --steps 2 --trace "$tmp/pp.json" > "$tmp/pp.log" 2>&1
status=$?
check "2-rank traced run exits 0 ($(tail -2 "$tmp/pp.log" | tr '\n' ' '))" '[ $status -eq 0 ]'
rank_tasks=$(sed -n 's/^trace: \([0-9]*\) tasks in .*pp\.rank[01]\.json$/\1/p' "$tmp/pp.log" | paste -sd+ | bc)
"$eellm" trace summary "$tmp/pp.rank0.json" "$tmp/pp.rank1.json" > "$tmp/pp.summary" 2>&1
check "both ranks' files read together: 2 ranks, $rank_tasks tasks ($(head -1 "$tmp/pp.summary"))" 'grep -q ": 2 ranks, 2 workers, 2 steps, $rank_tasks tasks" "$tmp/pp.summary"'
check "each rank's tasks carry its rank" '/usr/bin/python3 -c "
import json, sys
for r in (0, 1):
    t = json.load(open(sys.argv[1] + f\".rank{r}.json\"))
    assert {e[\"pid\"] for e in t[\"traceEvents\"]} == {r} and t[\"otherData\"][\"rank\"] == r
" "$tmp/pp"'

# Two data-parallel replicas of two workers each: their all-reduces are collective tasks, a
# kind of its own per rank in the summary and the report, each rank's time the sum of its
# collective tasks, the part overlapped the time other kinds' tasks ran on the rank meanwhile.
{ grep -v '^steps:' $train; echo "parallelism { dp: 2 }"; } > "$tmp/dp2.train.txtpb"
STARPU_WORKERS_CPUID="0 1" EELLM_STARPU_HOME="$tmp/starpu" timeout 300 scripts/eellm-mpirun 2 "$eellm" train --model $model \
  --train "$tmp/dp2.train.txtpb" --data "$tmp/train.bin" --out "$tmp/dp" --steps 2 --trace "$tmp/dp.json" > "$tmp/dp.log" 2>&1
status=$?
check "dp 2 traced run exits 0 ($(tail -2 "$tmp/dp.log" | tr '\n' ' '))" '[ $status -eq 0 ]'
"$eellm" trace summary "$tmp/dp.rank0.json" "$tmp/dp.rank1.json" > "$tmp/dp.summary" 2>&1
"$eellm" trace report "$tmp/dp.rank0.json" "$tmp/dp.rank1.json" -o "$tmp/dp.html" > /dev/null 2>&1
/usr/bin/python3 - "$tmp/dp" "$tmp/dp.summary" "$tmp/dp.html" > "$tmp/dp.check" 2>&1 <<'EOT'
import json, re, sys
base, summary, html = sys.argv[1], open(sys.argv[2]).read().splitlines(), open(sys.argv[3]).read()
head = next(i for i, l in enumerate(summary) if l.startswith("rank ") and "collective path" in l)
kinds = summary[head].split()[1:-4]  # then "collective path overlapped (ms)"
problems = []
for r in (0, 1):
    events = [e for e in json.load(open(f"{base}.rank{r}.json"))["traceEvents"] if e["ph"] == "X"]
    mine = [e for e in events if e["args"]["step"] >= 0 and e["cat"] == "collective"]
    allreduces = sum(1 for e in mine if e["name"] == "allreduce_sum")
    if allreduces == 0: problems.append(f"rank {r}: no allreduce_sum task of kind collective")
    fields = summary[head + 1 + r].split()
    if fields[:2] != ["rank", str(r)]: problems.append(f"row {r}: {fields[:2]}"); continue
    ms, path, overlapped = (float(fields[i]) for i in (2 + kinds.index("collective"), -2, -1))
    want = sum(e["dur"] for e in mine) / 1000
    if abs(ms - want) > 0.01 + 1e-3 * want: problems.append(f"rank {r}: collective {ms} ms, tasks {want:.2f}")
    if not 0 <= path <= ms + 0.01: problems.append(f"rank {r}: collective on the path {path} of {ms}")
    others = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e["args"]["step"] >= 0 and e["cat"] != "collective")
    union = []
    for a, b in others:
        if union and a <= union[-1][1]: union[-1][1] = max(union[-1][1], b)
        else: union.append([a, b])
    covered = sum(max(0, min(b, e["ts"] + e["dur"]) - max(a, e["ts"])) for e in mine for a, b in union) / 1000
    if abs(overlapped - covered) > 0.01 + 1e-3 * covered: problems.append(f"rank {r}: overlapped {overlapped} ms, tasks {covered:.3f}")
    if not re.search(rf"<tr><td>rank {r}</td>(<td>[0-9.]+</td>){{{len(kinds) + 2}}}</tr>", html):
        problems.append(f"report: no row for rank {r}")
if "Time per rank and kind" not in html or html.count('> collective</th>') != 1: problems.append("report: no per-rank table with a collective column")
print("\n".join(problems) if problems else "ok")
EOT
check "dp 2: collectives per rank in the summary and the report ($(head -3 "$tmp/dp.check" | tr '\n' ' '))" 'grep -qx ok "$tmp/dp.check"'

# Bad arguments: one line, status 2.
expect_error "unknown --trace-format" "trace-format wants chrome or paje" run --out "$tmp/x1" --trace "$tmp/x.json" --trace-format otf2
expect_error "unwritable --trace" "/proc/eellm/t.json" run --out "$tmp/x2" --trace /proc/eellm/t.json
expect_error "summary of a missing file" "nope\.json" "$eellm" trace summary "$tmp/nope.json"
"$eellm" trace report "$tmp/trace.json" > /dev/null 2>&1
status=$?
check "report without -o: status 2" '[ $status -eq 2 ]'

finish trace_cli
