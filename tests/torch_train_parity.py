#!/usr/bin/python3
"""Checks three eellm AdamW steps against torch.optim.AdamW on the same model and data.

Usage: torch_train_parity.py DIR BETA1 BETA2 EPS WEIGHT_DECAY GRAD_CLIP
DIR holds model.safetensors (weights before the first step), after.safetensors
(weights after the third) and steps.safetensors (tokens and targets
[step, micro, batch, seq], eellm's per-exit losses per step, the learning rate
and gradient norm of each step), written by test_train_parity. The model runs
in float64 with weight decay on matrices only and clip_grad_norm_, as eellm
does. Exits 1 if a loss, a gradient norm or an updated parameter differs by
more than 1e-4 relative (max |eellm - torch| / max |torch| per tensor).
"""
import os
import sys

import numpy as np
import torch

from torch_parity import EarlyExitModel, Errors, group_of, load_spec, read_safetensors



def main():
    run_dir = sys.argv[1]
    beta1, beta2, eps, weight_decay, grad_clip = map(float, sys.argv[2:7])
    weights, meta = read_safetensors(os.path.join(run_dir, "model.safetensors"))
    after, _ = read_safetensors(os.path.join(run_dir, "after.safetensors"))
    steps, _ = read_safetensors(os.path.join(run_dir, "steps.safetensors"))
    spec, pb = load_spec(meta)
    model = EarlyExitModel(spec, pb, weights)
    params = list(model.p.values())
    matrices = [p for p in params if p.ndim == 2]
    vectors = [p for p in params if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": weight_decay},
                             {"params": vectors, "weight_decay": 0.0}],
                            lr=1.0, betas=(beta1, beta2), eps=eps)
    exit_weights = [e.loss_weight for e in spec.exits] + [1.0]
    tokens, targets = steps["tokens"], steps["targets"]
    n_steps, n_micro = tokens.shape[0], tokens.shape[1]
    errors = Errors()

    for s in range(n_steps):
        opt.zero_grad()
        for group in opt.param_groups:
            group["lr"] = float(steps["lr"][s])
        total, losses = 0, np.zeros(len(exit_weights))
        for mi in range(n_micro):
            mask = torch.ones(tokens.shape[2:], dtype=torch.float64)
            per_exit = model.losses(torch.tensor(tokens[s, mi], dtype=torch.long),
                                    torch.tensor(targets[s, mi], dtype=torch.long), mask)
            losses += np.array([l.item() for l in per_exit]) / n_micro
            total = total + sum(w * l for w, l in zip(exit_weights, per_exit)) / n_micro
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        errors.record("losses", steps["losses"][s], losses)
        errors.record("grad norm", [steps["grad_norm"][s]], [norm.item()])
        print(f"step {s + 1}: lr {steps['lr'][s]:.3g} grad norm eellm {steps['grad_norm'][s]:.6f}"
              f" torch {norm.item():.6f}; losses eellm {np.array2string(steps['losses'][s], precision=6)}"
              f" torch {np.array2string(losses, precision=6)}")
    for name, p in model.p.items():
        errors.record("params " + group_of(name), after[name], p.detach().numpy())
    sys.exit(0 if errors.report(spec.name) else 1)


if __name__ == "__main__":
    main()
