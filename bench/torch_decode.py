#!/usr/bin/python3
"""Greedy decoding at full depth in PyTorch, the peer of bench_decode: the same
model shape (bench/torch_model.py's EarlyExitGPT, normal(0, 0.02) weights),
a KV-cached loop as a PyTorch user writes it (each layer's keys and values
concatenated step by step, the final head's argmax), under torch.inference_mode.

Usage: torch_decode.py SPEC PROMPT TOKENS REPEATS THREADS BATCH...
-> "batch=B tokens_per_s=X" per repeat and batch, as bench_decode prints
(prompt ids 1 .. PROMPT for every sequence, the prompt's step included).
"""
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_model import HAVE_SDPA, EarlyExitGPT  # noqa: E402
from torch_train_step import load_text_spec  # noqa: E402


def attend(attn, x, cache):
    """attn (an Attention module) on the new rows x [B, T, D], keys and values
    appended to cache (a [k, v] pair, None at first)."""
    b, t, d = x.shape
    q, k, v = (z.view(b, t, attn.h, d // attn.h).transpose(1, 2)
               for z in attn.c_attn(x).split(d, -1))
    if cache[0] is not None:
        k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
    cache[0], cache[1] = k, v
    if HAVE_SDPA:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
    else:
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // attn.h)
        if t > 1:
            causal = torch.ones(t, k.shape[2], dtype=torch.bool).tril(k.shape[2] - t)
            scores = scores.masked_fill(~causal, float("-inf"))
        y = scores.softmax(-1) @ v
    return attn.c_proj(y.transpose(1, 2).reshape(b, t, d))


def forward(model, tokens, pos0, caches):
    """The final head's logits of the last row, from new tokens [B, T] at positions pos0 ..."""
    t = tokens.shape[1]
    x = model.wte(tokens) + model.wpe(torch.arange(pos0, pos0 + t))
    for block, cache in zip(model.h, caches):
        r = x + attend(block.attn, block.ln_1(x), cache)
        x = r + block.mlp(block.ln_2(r))
    return model.lm_head(model.ln_f(x[:, -1]))


def generate(model, prompt, tokens):
    caches = [[None, None] for _ in model.h]
    logits = forward(model, prompt, 0, caches)
    out = []
    for i in range(tokens):
        next_token = logits.argmax(-1, keepdim=True)
        out.append(next_token)
        if i + 1 < tokens:
            logits = forward(model, next_token, prompt.shape[1] + i, caches)
    return torch.cat(out, 1)


def main():
    path, prompt_len, tokens, repeats, threads = sys.argv[1], *map(int, sys.argv[2:6])
    batches = [int(b) for b in sys.argv[6:]]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec, pb = load_text_spec(path)
    if spec.positions != pb.Model.LEARNED:
        sys.exit("torch_decode.py: learned positions only")
    model = EarlyExitGPT(spec, pb).eval()
    with torch.inference_mode():
        prompt = torch.arange(1, prompt_len + 1).repeat(max(batches), 1)
        generate(model, prompt, 4)
        for _ in range(repeats):
            for b in batches:
                t0 = time.perf_counter()
                out = generate(model, prompt[:b], tokens)
                rate = out.numel() / (time.perf_counter() - t0)
                print(f"batch={b} tokens_per_s={rate:.1f}", flush=True)


if __name__ == "__main__":
    main()
