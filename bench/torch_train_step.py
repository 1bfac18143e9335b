#!/usr/bin/python3
"""Times training steps of the same early-exit model in PyTorch (float32):
forward, every exit's loss, backward, clipping and AdamW, on random tokens.

Usage: torch_train_step.py MODEL.txtpb BATCH SEQ STEPS THREADS [DEVICE] -> one line key=value
The model is bench/torch_model.py's EarlyExitGPT (nn.Module layers, fused
attention where torch has it), in float32, initialised normal(0, 0.02).
DEVICE (default cpu) is a torch device such as cuda; on a GPU the line also holds
sgemm_gflops, the rate of float32 matrix products (cuBLAS, TF32 off) there.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_parity import model_schema  # noqa: E402
from torch_model import EarlyExitGPT  # noqa: E402


def load_text_spec(path):
    from google.protobuf import text_format
    model_pb2 = model_schema()
    spec = model_pb2.Model()
    with open(path) as f:
        text_format.Parse(f.read(), spec)
    return spec, model_pb2


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
    model = EarlyExitGPT(spec, pb)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    tokens = torch.randint(0, spec.vocab_size, (batch, seq + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    for step in range(steps + 1):
        if step == 1:
            sync()
            t0 = time.perf_counter()
        opt.zero_grad()
        model.loss(x, y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    peak = f" sgemm_gflops={sgemm_gflops(sync):.1f}" if device != "cpu" else ""
    print(f"tokens_per_s={batch * seq / seconds:.1f} step_ms={seconds * 1e3:.2f} threads={threads}{peak}")


if __name__ == "__main__":
    main()
