#!/usr/bin/python3
"""Checks `eellm eval`'s figures against an independent PyTorch computation.

Usage: torch_eval_parity.py CKPT DATA EVAL_JSON [--heldout loss|agreement VALUE]

Rebuilds the checkpoint's model with torch_parity.py's EarlyExitModel (float64),
scores DATA (an eellm token file) in the windows eellm eval uses (consecutive
windows of seq_len tokens, each position predicting the next, n - 1 scored
positions), and recomputes from the logits alone: each exit's loss, and for
every point of EVAL_JSON's sweep the share of tokens leaving at each exit, the
early-exit loss and the top-1 agreement with the final head (a token leaves
at the first exit in layer order whose confidence, max softmax probability or
1 - entropy / log V, reaches the threshold; none when the threshold is >= 1).
Prints the largest differences; exits 1 when one is above its tolerance.

Losses: relative 1e-4, as the other parity tests (eellm runs in float32).
Shares and agreement: exact, up to tokens whose confidence lies within 1e-5 of
the threshold (float32 against float64 may decide those either way): each such
token may move 1/N of share, and its loss difference is allowed for.

--heldout: DATA was not used to calibrate; the calibrated point of EVAL_JSON
(calibrated: true) must keep its target on DATA (loss increase at most VALUE,
or agreement at least VALUE) within 3 standard errors of the held-out
estimate (per-token paired differences), the sampling noise of a held-out set
of that size.
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_parity import EarlyExitModel, load_spec, read_safetensors  # noqa: E402

LOSS_TOLERANCE = 1e-4
BORDER = 1e-5


def read_tokens(path):
    raw = open(path, "rb").read()
    assert raw[:8] == b"EELLMTOK", path
    (count,) = np.frombuffer(raw[24:32], dtype="<u8")
    return np.frombuffer(raw[32:32 + 2 * int(count)], dtype="<u2").astype(np.int64)


def per_token(model, spec, tokens, seq_len):
    """Per scored token and exit (layer order, final last): log p(target),
    both confidences, top-1; and the exit order."""
    order = sorted(range(len(spec.exits)), key=lambda k: spec.exits[k].layer) + [len(spec.exits)]
    n = len(tokens) - 1
    cols = {"logp": [], "maxprob": [], "entropy": [], "top": []}
    with torch.no_grad():
        for start in range(0, n, seq_len):
            end = min(start + seq_len, n)
            x = torch.tensor(tokens[start:end][None, :])
            y = torch.tensor(tokens[start + 1:end + 1])
            logits = model.logits(x)
            rows = {k: [] for k in cols}
            for k in order:
                lp = torch.log_softmax(logits[k][0], -1)
                p = lp.exp()
                entropy = -(p * lp).sum(-1)
                rows["logp"].append(lp[torch.arange(len(y)), y])
                rows["maxprob"].append(p.max(-1).values)
                rows["entropy"].append(1 - entropy / math.log(lp.shape[-1]))
                rows["top"].append(lp.argmax(-1))
            for k in cols:
                cols[k].append(torch.stack(rows[k], -1).numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}, order


def decide(conf, threshold):
    """Exit index (layer order) per token at threshold, the final head last."""
    n, e = conf.shape
    if threshold >= 1:
        return np.full(n, e - 1)
    hit = conf[:, :-1] >= threshold
    first = np.where(hit.any(1), hit.argmax(1), e - 1)
    return first


def main():
    ckpt, data, json_path = sys.argv[1:4]
    heldout = sys.argv[5:7] if len(sys.argv) > 4 and sys.argv[4] == "--heldout" else None
    weights, meta = read_safetensors(ckpt)
    spec, pb = load_spec(meta)
    model = EarlyExitModel(spec, pb, weights)
    ev = json.load(open(json_path))
    tokens = read_tokens(data)
    t, order = per_token(model, spec, tokens, ev["seq_len"])
    n, E = t["logp"].shape
    assert n == ev["tokens"], (n, ev["tokens"])
    worst = {"exit loss (rel)": 0.0, "share": 0.0, "EE loss (rel)": 0.0, "agreement": 0.0}
    ok = True
    for j, x in enumerate(ev["exits"]):
        want = -t["logp"][:, j].mean()
        worst["exit loss (rel)"] = max(worst["exit loss (rel)"], abs(x["loss"] - want) / want)
    ok &= worst["exit loss (rel)"] <= LOSS_TOLERANCE
    agree = t["top"] == t["top"][:, -1:]
    for p in ev["sweep"]:
        conf = t[p["rule"]]
        th = p["threshold"]
        at = decide(conf, th)
        border = int((np.abs(conf[:, :-1] - th) < BORDER).any(1).sum()) if th < 1 else 0
        share = np.bincount(at, minlength=E) / n
        chosen_logp = t["logp"][np.arange(n), at]
        loss = -chosen_logp.mean()
        agreement = agree[np.arange(n), at].mean()
        ds = float(np.abs(np.array(p["share"]) - share).max())
        dl = abs(p["loss"] - loss) / loss
        da = abs(p["agreement"] - agreement)
        worst["share"] = max(worst["share"], ds)
        worst["EE loss (rel)"] = max(worst["EE loss (rel)"], dl)
        worst["agreement"] = max(worst["agreement"], da)
        slack = border / n
        if ds > slack + 1e-9 or da > slack + 1e-9 or dl > LOSS_TOLERANCE + slack * 20 / loss:
            print(f"FAIL {p['rule']} {th}: share diff {ds:.2e}, agreement diff {da:.2e}, "
                  f"loss rel diff {dl:.2e} ({border} tokens at the border)")
            ok = False
    print(f"{spec.name}: {n} tokens, {len(ev['sweep'])} sweep points; largest differences: " +
          ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    if heldout:
        kind, value = heldout[0], float(heldout[1])
        points = [p for p in ev["sweep"] if p["calibrated"]]
        if not points:
            print("FAIL no calibrated point in", json_path)
            ok = False
        for p in points:
            at = decide(t[p["rule"]], p["threshold"])
            final = -t["logp"][:, -1]
            ee = -t["logp"][np.arange(n), at]
            if kind == "loss":
                inc = ee.mean() / final.mean() - 1
                se = (ee - final).std(ddof=1) / math.sqrt(n) / final.mean()
                good = inc <= value + 3 * se
                print(f"held out {p['rule']} threshold {p['threshold']:.4g}: loss increase "
                      f"{100 * inc:.2f}% (target {100 * value:.2f}%, +3 SE {300 * se:.2f}%) "
                      f"{'ok' if good else 'FAIL'}")
            else:
                a = agree[np.arange(n), at]
                se = math.sqrt(max(a.mean() * (1 - a.mean()), 1 / n) / n)
                good = a.mean() >= value - 3 * se
                print(f"held out {p['rule']} threshold {p['threshold']:.4g}: agreement "
                      f"{100 * a.mean():.2f}% (target {100 * value:.2f}%, -3 SE {300 * se:.2f}%) "
                      f"{'ok' if good else 'FAIL'}")
            ok &= bool(good)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
