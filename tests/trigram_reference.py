#!/usr/bin/python3
"""Checks `eellm eval --baseline-train`'s trigram against an independent computation.

Usage: trigram_reference.py TRAIN VAL EVAL_JSON [MAX_TOKENS]

Interpolated Kneser-Ney (Chen & Goodman), written from the definitions with
Python dictionaries: trigram counts from TRAIN (the first token's context
starts with a "no token" id V); bigram and unigram levels count distinct left
contexts; each level's discount is n1 / (n1 + 2 n2) (0.5 when n1 is 0); the
unigrams are interpolated with 1 / V. Scores VAL's first MAX_TOKENS tokens
(all by default), each token after the first from the two before it, and
compares the mean loss and the discounts with EVAL_JSON's "baseline"
(relative 1e-8: both sum in double precision, in other orders). Exits 1 on a mismatch.
"""
import json
import math
import sys
from collections import Counter, defaultdict

from torch_eval_parity import read_tokens


def discount(counts):
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    return n1 / (n1 + 2 * n2) if n1 else 0.5


def level(count, total, types, d, lower):
    if total == 0:
        return lower
    return max(count - d, 0) / total + d * types / total * lower


class KneserNey:
    def __init__(self, train, V):
        self.V = V
        self.tri = Counter()
        for i in range(len(train) - 1):
            self.tri[(train[i - 1] if i else V, train[i], train[i + 1])] += 1
        self.bi = Counter((b, c) for (_, b, c) in self.tri)
        self.uni = Counter(c for (_, c) in self.bi)
        self.ctx3, self.ctx2 = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
        for (a, b, _), n in self.tri.items():
            self.ctx3[(a, b)][0] += n
            self.ctx3[(a, b)][1] += 1
        for (b, _), n in self.bi.items():
            self.ctx2[b][0] += n
            self.ctx2[b][1] += 1
        self.d = [discount(self.uni), discount(self.bi), discount(self.tri)]

    def prob(self, a, b, c):
        p1 = level(self.uni[c], len(self.bi), len(self.uni), self.d[0], 1 / self.V)
        total, types = self.ctx2.get(b, (0, 0))
        p2 = level(self.bi[(b, c)], total, types, self.d[1], p1)
        total, types = self.ctx3.get((a, b), (0, 0))
        return level(self.tri[(a, b, c)], total, types, self.d[2], p2)


def main():
    train_path, val_path, json_path = sys.argv[1:4]
    report = json.load(open(json_path))
    V = report["baseline"]["vocab_size"]
    train = [int(t) for t in read_tokens(train_path)]
    val = [int(t) for t in read_tokens(val_path)]
    if len(sys.argv) > 4:
        val = val[: int(sys.argv[4])]
    kn = KneserNey(train, V)
    nll = -sum(math.log(kn.prob(val[i - 1] if i else V, val[i], val[i + 1]))
               for i in range(len(val) - 1))
    want = {"loss": nll / (len(val) - 1), "discounts": kn.d}
    got = report["baseline"]
    worst = max(abs(g - w) / abs(w) for g, w in
                zip([got["loss"]] + got["discounts"], [want["loss"]] + want["discounts"]))
    print(f"trigram baseline: eellm {got['loss']:.9f}, reference {want['loss']:.9f} nats/token "
          f"over {len(val) - 1} tokens; discounts {kn.d}; worst relative difference {worst:.2e}")
    sys.exit(0 if worst <= 1e-8 and got["tokens"] == len(val) - 1 else 1)


if __name__ == "__main__":
    main()
