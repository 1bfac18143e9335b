"""Where a decoded token's time goes, from the trace of one `eellm generate --trace` call.

Usage: decode_time.py TRACE.json TOKENS LABEL -> one line of figures per decoded token

The prompt's step (step 0, which also gives the first token) is left out; the
other TOKENS - 1 tokens share the rest. wall: from the first task's start to
the last task's end. Task time (busy) is split into the layers, the heads (each
head's row gather, norm and projection: exits' tasks, and the final head's,
which are the tasks of the last layer from its row gather on), the choice
(next_token: softmax summary and argmax) and the rest (inputs, embedding). The
gap between wall and busy is where no task ran: task start latency, and the
host waiting for each head's choice before it submits what follows.
"""
import collections
import json
import sys


def head_tasks(events):
    """Ids of the final head's tasks: per step, the last layer's tasks from its row gather on,
    or, where the head reads every row in place (no gather), from its norm on (the last
    norm_fwd submitted for the step's last layer)."""
    by_step_layer = collections.defaultdict(list)
    for e in events:
        a = e["args"]
        if a["kind"] == "forward" and a["layer"] >= 0:
            by_step_layer[a["micro"], a["layer"]].append(e)
    last_layer = collections.defaultdict(int)
    for step, layer in by_step_layer:
        last_layer[step] = max(last_layer[step], layer)
    heads = set()
    for (step, layer), group in by_step_layer.items():
        if layer != last_layer[step]:
            continue
        group.sort(key=lambda e: e["args"]["submit_us"])
        names = [e["name"] for e in group]
        if "gather_rows" in names:
            heads.update(id(e) for e in group[names.index("gather_rows"):])
        elif "norm_fwd" in names:
            start = len(names) - 1 - names[::-1].index("norm_fwd")
            heads.update(id(e) for e in group[start:])
    return heads


def main():
    path, tokens, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e["ph"] == "X"]
    events = [e for e in events if e["args"]["micro"] > 0]
    heads = head_tasks(events)
    busy = collections.Counter()
    for e in events:
        a = e["args"]
        if e["name"] == "next_token":
            part = "choice"
        elif a["kind"] == "exit" or id(e) in heads:
            part = "heads"
        elif a["layer"] >= 0:
            part = "layers"
        else:
            part = "other"
        busy[part] += e["dur"]
    wall = max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)
    n = tokens - 1
    print(f"{label:<24} {wall / n:9.0f} {sum(busy.values()) / n:9.0f} {busy['layers'] / n:9.0f} "
          f"{busy['heads'] / n:9.0f} {busy['choice'] / n:9.0f} {busy['other'] / n:9.0f} "
          f"{len(events) / n:7.1f}")


if __name__ == "__main__":
    main()
