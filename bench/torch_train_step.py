#!/usr/bin/python3
"""Times training steps of the same early-exit model in PyTorch (float32):
forward, every exit's loss, backward, clipping and AdamW, on random tokens.

Usage: torch_train_step.py MODEL.txtpb BATCH SEQ STEPS THREADS [DEVICE] -> one line key=value
The model is the one tests/torch_parity.py builds (the eellm model written plainly
in PyTorch), in float32 and with weights from a normal(0, 0.02) initialisation.
DEVICE (default cpu) is a torch device such as cuda; on a GPU the line also holds
sgemm_gflops, the rate of float32 matrix products (cuBLAS, TF32 off) there.
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from torch_parity import EarlyExitModel, model_schema  # noqa: E402


def load_text_spec(path):
    from google.protobuf import text_format
    model_pb2 = model_schema()
    spec = model_pb2.Model()
    with open(path) as f:
        text_format.Parse(f.read(), spec)
    return spec, model_pb2


def shapes(spec, pb):
    d, v, f = spec.d_model, spec.vocab_size, spec.ffn_size or 4 * spec.d_model
    fc = 2 * f if spec.activation == pb.Model.SWIGLU else f
    norm_bias = spec.norm == pb.Model.LAYERNORM and spec.bias

    def norm(prefix):
        out = {prefix + "weight": (d,)}
        if norm_bias:
            out[prefix + "bias"] = (d,)
        return out

    def linear(prefix, i, o):
        out = {prefix + "weight": (i, o)}
        if spec.bias:
            out[prefix + "bias"] = (o,)
        return out

    def mlp(prefix):
        return {**norm(prefix + "ln_2."), **linear(prefix + "mlp.c_fc.", d, fc),
                **linear(prefix + "mlp.c_proj.", f, d)}

    def layer(prefix):
        return {**norm(prefix + "ln_1."), **linear(prefix + "attn.c_attn.", d, 3 * d),
                **linear(prefix + "attn.c_proj.", d, d), **mlp(prefix)}

    t = {"transformer.wte.weight": (v, d)}
    if spec.positions == pb.Model.LEARNED:
        t["transformer.wpe.weight"] = (spec.context_length, d)
    for i in range(spec.n_layers):
        t.update(layer(f"transformer.h.{i}."))
    t.update(norm("transformer.ln_f."))
    if not spec.tie_embeddings:
        t["lm_head.weight"] = (v, d)
    for k, e in enumerate(spec.exits):
        p = f"exits.{k}."
        if e.structure == pb.Exit.MLP:
            t.update(mlp(p))
        if e.structure == pb.Exit.BLOCK:
            t.update(layer(p + "h."))
        if e.structure != pb.Exit.PLAIN:
            t.update(norm(p + "ln_f."))
        if not e.tied:
            t[p + "lm_head.weight"] = (v, d)
    return t


def sgemm_gflops(sync, n=8192, reps=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9


def main():
    path, batch, seq, steps, threads = sys.argv[1], *map(int, sys.argv[2:6])
    device = sys.argv[6] if len(sys.argv) > 6 else "cpu"
    torch.set_num_threads(threads)
    sync = lambda: None  # noqa: E731
    if device != "cpu":
        torch.set_default_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 math, as eellm's
        sync = torch.cuda.synchronize
    torch.manual_seed(0)
    spec, pb = load_text_spec(path)
    weights = {name: (np.random.default_rng(0).normal(0, 0.02, shape) if len(shape) == 2
                      else np.ones(shape)).astype(np.float32)
               for name, shape in shapes(spec, pb).items()}
    model = EarlyExitModel(spec, pb, weights)
    model.p = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in weights.items()}
    params = list(model.p.values())
    opt = torch.optim.AdamW(params, lr=1e-4)
    tokens = torch.randint(0, spec.vocab_size, (batch, seq + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    mask = torch.ones(batch, seq, dtype=torch.float32)
    exit_weights = [e.loss_weight for e in spec.exits] + [1.0]
    for step in range(steps + 1):
        if step == 1:
            sync()
            t0 = time.perf_counter()
        opt.zero_grad()
        losses = model.losses(x, y, mask)
        sum(w * l for w, l in zip(exit_weights, losses)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    peak = f" sgemm_gflops={sgemm_gflops(sync):.1f}" if device != "cpu" else ""
    print(f"tokens_per_s={batch * seq / seconds:.1f} step_ms={seconds * 1e3:.2f} threads={threads}{peak}")


if __name__ == "__main__":
    main()
