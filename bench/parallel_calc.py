#!/usr/bin/env python3
"""What a (pp, tp, dp) layout costs per rank, from the model's own accounting.

    bench/parallel_calc.py MODEL.txtpb --pp P --tp T --dp D --global-batch B
        --micro-batches M --seq-len S [--zero 1] [--eellm build/eellm] [--json]

Parameters per layer, exit, embedding and head, and the stage split, come from
`eellm model MODEL --pp P` (the library's accounting and split); this applies
the parallel formulas to them, per pipeline stage (every rank of a stage costs
the same; with ZeRO-1 the figures are the replicas' mean). Bytes are float32,
sent per rank per training step:

  pipeline  (StarPU-MPI, point to point) the residual stream [rows, D] forward
            to the next stage and its gradient back, per micro-batch (rows =
            B / M / D sequences x S tokens, a replica's share); targets and
            loss mask (2 x rows x 4 bytes) from stage 0 to each later stage
            with a loss; a tied head's weight [V / T, D] from its owner to each
            other stage using it, and that stage's gradient of it back.
  dp        ring all-reduce of the stage's gradients, 2 (D-1) / D x the
            gradient bytes a rank holds; ZeRO-1 adds the broadcast of the
            updated weights, (D-1) / D x the same bytes on average.
  tp        ring all-reduces, 2 (T-1) / T x: per micro-batch, 4 of [rows, D]
            per layer (forward after the attention output projection and the
            MLP's second linear, backward of the QKV and first linear's input
            gradients), 1 for the vocabulary-parallel embedding, and per head
            1 of [rows, D] (the input gradient of the vocabulary-split
            projection) plus the cross-entropy's per-row max, sum and target
            logit (3 x rows);
            an MLP exit body adds 2 of [rows, D], a BLOCK body 4.

The 8-byte gradient-norm terms, loss statistics and StarPU-MPI's envelopes are
left out (bench/parallel reports them as the counted remainder). Under tp the
norms, learned positions and the biases of the row-parallel products are whole
on every rank, and every other tensor is split T ways.

Memory per rank: parameters, gradients (plus the gradient of a tied head the
stage uses but does not own), AdamW moments (/ D with ZeRO-1) and activations:
P - s micro-batch slots on stage s (the pools' window), each holding per row
and layer 8 D + 2 F + H + 4 floats (SwiGLU: 3 F; the attention and MLP
inner parts / T), per head 2 V / T + D + 2 (logits, their gradient, the normed
input), and per stage the residual, its gradient, the received activations
and the gradient scratch (3 D + 3 D / T + 2 F / T per row).
"""
import argparse
import json
import re
import subprocess
import sys

F32 = 4


def describe(eellm, model, pp):
    out = subprocess.run([eellm, "model", model, "--pp", str(pp)], check=True, text=True,
                         capture_output=True).stdout
    num = lambda pattern: int(re.search(pattern, out, re.M).group(1))
    spec = {
        "V": num(r"vocab (\d+),"), "D": num(r"d_model (\d+),"), "H": num(r"(\d+) heads of"),
        "F": num(r"ffn (\d+)$"), "swiglu": ", swiglu," in out,
        "tied_embeddings": "untied embeddings" not in out,
        "biases": ", biases," in out or out.split("\n")[2].rstrip().endswith("biases"),
        "layernorm": "layernorm" in out.split("\n")[2],
        "learned": "learned positions" in out, "context": num(r"context (\d+),"),
        "embedding": num(r"^  embedding \(wte \+ wpe\)\s+(\d+)"),
        "layer": num(r"^  each layer\s+(\d+)"),
        "final": num(r"^  final head \([^)]*\)\s+(\d+)"), "exits": [],
    }
    for m in re.finditer(r"^  exit (\d+) \(layer (\d+), (\w+)(, tied)?\)\s+(\d+)", out, re.M):
        spec["exits"].append({"structure": m.group(3), "tied": bool(m.group(4)),
                              "params": int(m.group(5))})
    stages = []
    table = out[out.index("pipeline stages"):] if pp > 1 else None
    if table:
        for m in re.finditer(r"^  (\d+)\s+(\d+)-(\d+)\s+(\S+)", table, re.M):
            exits = [] if m.group(4) == "-" else [int(k) for k in m.group(4).split(",")]
            stages.append({"layers": int(m.group(3)) - int(m.group(2)) + 1, "exits": exits})
    else:
        stages.append({"layers": num(r"(\d+) layers,"), "exits": list(range(len(spec["exits"])))})
    return spec, stages


def ring(n):
    """What a ring all-reduce sends per rank, over the buffer's bytes, among n ranks."""
    return 2 * (n - 1) / n


def costs(spec, stages, pp, tp, dp, global_batch, micro_batches, seq_len, zero):
    V, D, H, F = spec["V"], spec["D"], spec["H"], spec["F"]
    rows = global_batch // micro_batches // dp * seq_len
    m = micro_batches
    last = pp - 1
    # The tied head tensor: wte (stage 0) or the final lm_head (last stage), and who uses it.
    owner = 0 if spec["tied_embeddings"] else last
    users = {last} if spec["tied_embeddings"] or any(e["tied"] for e in spec["exits"]) else set()
    if spec["tied_embeddings"]:
        users.add(0)
    for s, st in enumerate(stages):
        if any(spec["exits"][k]["tied"] for k in st["exits"]):
            users.add(s)
    tied_floats = V * D / tp
    fc_out = 2 * F if spec["swiglu"] else F
    # ln_1, r, ln_2, the output and two norms' statistics whole; qkv, attention, its log-sum-exp,
    # fc and the activation split by heads and columns.
    per_layer_row = 4 * D + 4 + (3 * D + D + H + fc_out + F) / tp
    per_head_row = 2 * V / tp + D + 2
    # What tensor parallelism keeps whole on every rank: norms, positions and the biases
    # of the row-parallel products (c_proj); the rest is split T ways.
    norm = D * (2 if spec["layernorm"] and spec["biases"] else 1)
    whole_layer = 2 * norm + (2 * D if spec["biases"] else 0)
    whole_exit = {"NORM": norm, "MLP": 2 * norm + (D if spec["biases"] else 0),
                  "BLOCK": norm + whole_layer, "PLAIN": 0}
    result = []
    for s, st in enumerate(stages):
        heads = len(st["exits"]) + (s == last)
        params = st["layers"] * spec["layer"] + sum(spec["exits"][k]["params"] for k in st["exits"])
        params += spec["embedding"] * (s == 0) + spec["final"] * (s == last)
        whole = st["layers"] * whole_layer + (s == last) * norm
        whole += (s == 0) * (spec["context"] * D if spec["learned"] else 0)
        whole += sum(whole_exit.get(spec["exits"][k]["structure"], 0) for k in st["exits"])
        whole = whole if tp > 1 else params
        params = (params - whole) / tp + whole
        shadow = tied_floats if s in users and s != owner else 0
        later_losses = sum(1 for q in range(1, pp) if stages[q]["exits"] or q == last)
        pipe = m * rows * D * F32 * ((s < last) + (s > 0))
        pipe += (s == 0) * 2 * m * rows * 4 * later_losses
        pipe += (s == owner) * len(users - {owner}) * tied_floats * F32 + shadow * F32
        dp_bytes = ring(dp) * params * F32 + (zero and (dp - 1) / dp * params * F32)
        bodies = sum({"MLP": 2, "BLOCK": 4}.get(spec["exits"][k]["structure"], 0)
                     for k in st["exits"])
        tp_rows = rows * D * (4 * st["layers"] + (s == 0) + heads + bodies) + 3 * rows * heads
        tp_bytes = ring(tp) * m * tp_rows * F32
        slot = rows * (st["layers"] * per_layer_row + heads * per_head_row +
                       len(st["exits"]) * D + 3 * D + (3 * D + 2 * fc_out) / tp)
        result.append({
            "stage": s, "layers": st["layers"], "exits": st["exits"], "rows": rows,
            "bytes": {"pipeline": pipe, "dp": dp_bytes, "tp": tp_bytes},
            "memory": {"parameters": params * F32, "gradients": (params + shadow) * F32,
                       "moments": 2 * params * F32 / (dp if zero else 1),
                       "activations": (pp - s) * slot * F32},
        })
    return result


def human(n):
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--eellm", default="build/eellm")
    for flag in ("pp", "tp", "dp", "global-batch", "micro-batches", "seq-len"):
        ap.add_argument("--" + flag, type=int, required=True)
    ap.add_argument("--zero", type=int, default=0, choices=(0, 1))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.global_batch % (a.micro_batches * a.dp):
        sys.exit(f"parallel_calc: global batch {a.global_batch} is not a multiple of "
                 f"micro-batches x dp ({a.micro_batches} x {a.dp})")
    spec, stages = describe(a.eellm, a.model, a.pp)
    result = costs(spec, stages, a.pp, a.tp, a.dp, a.global_batch, a.micro_batches, a.seq_len,
                   a.zero)
    if a.json:
        print(json.dumps(result))
        return
    print(f"{a.model} at (pp {a.pp}, tp {a.tp}, dp {a.dp}{', ZeRO-1' if a.zero else ''}), "
          f"{a.pp * a.tp * a.dp} ranks; {a.micro_batches} micro-batches of "
          f"{result[0]['rows'] // a.seq_len} x {a.seq_len} tokens per replica")
    print(f"{'stage':>5} {'layers':>6} {'params':>11} {'grads':>11} {'moments':>11} "
          f"{'activations':>11} {'total':>11} | {'pipeline/step':>13} {'dp/step':>11} "
          f"{'tp/step':>11} {'sent/step':>11}")
    for r in result:
        mem, b = r["memory"], r["bytes"]
        print(f"{r['stage']:>5} {r['layers']:>6} " +
              " ".join(f"{human(v):>11}" for v in list(mem.values()) + [sum(mem.values())]) +
              " | " + " ".join(f"{human(v):>11}" for v in b.values()) +
              f" {human(sum(b.values())):>11}")


if __name__ == "__main__":
    main()
