#!/usr/bin/python3
"""Checks eellm's forward and backward against PyTorch on the same weights and batch.

Usage: torch_parity.py DIR
DIR holds model.safetensors (a checkpoint written by eellm, the binary model
spec base64 in __metadata__) and step.safetensors (the micro-batches, eellm's
per-exit losses and every parameter's gradient, written by test_model_parity).
The model is rebuilt in PyTorch from the spec and run in float64. Prints, per
tensor group, the max relative error max|eellm - torch| / max|torch|; exits 1
if any exceeds 1e-4.
"""
import base64
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch
import torch.nn.functional as F

TOLERANCE = 1e-4
DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64,
          "U16": np.uint16, "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]])
        tensors[name] = arr.reshape(info["shape"]).copy()
    return tensors, meta


def model_schema():
    """The Python module protoc generates from schemas/model.proto or, where there is no
    protoc (the GPU machine of scripts/device-check), its classes built from
    $EELLM_MODEL_DESCRIPTORS, a descriptor set protoc wrote elsewhere."""
    if os.environ.get("EELLM_MODEL_DESCRIPTORS"):
        return schema_from_descriptors(os.environ["EELLM_MODEL_DESCRIPTORS"])
    out = tempfile.mkdtemp()
    schemas = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "schemas")
    subprocess.run(["protoc", f"--proto_path={schemas}", f"--python_out={out}", "model.proto"],
                   check=True)
    sys.path.insert(0, out)
    import model_pb2  # noqa: E402 (generated just above)
    return model_pb2


def schema_from_descriptors(path):
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    with open(path, "rb") as f:
        files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    # GetMessageClass since protobuf 4.22; MessageFactory before (removed in 5).
    message_class = getattr(message_factory, "GetMessageClass", None) or \
        message_factory.MessageFactory(pool).GetPrototype
    messages = pool.FindFileByName("model.proto").message_types_by_name
    return types.SimpleNamespace(**{name: message_class(d) for name, d in messages.items()})


def load_spec(meta):
    """The model spec stored in a checkpoint's metadata."""
    model_pb2 = model_schema()
    spec = model_pb2.Model()
    spec.ParseFromString(base64.b64decode(meta["spec"]))
    return spec, model_pb2


class EarlyExitModel:
    """The eellm model, written plainly in PyTorch (float64)."""

    def __init__(self, spec, pb, weights):
        self.s, self.pb = spec, pb
        self.p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                  for k, v in weights.items()}
        self.d_ffn = spec.ffn_size or 4 * spec.d_model

    def norm(self, x, prefix):
        w = self.p[prefix + ".weight"]
        if self.s.norm == self.pb.Model.RMSNORM:
            return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.s.norm_eps) * w
        return F.layer_norm(x, (x.shape[-1],), w, self.p.get(prefix + ".bias"), self.s.norm_eps)

    def linear(self, x, prefix):
        y = x @ self.p[prefix + ".weight"]
        b = self.p.get(prefix + ".bias")
        return y + b if b is not None else y

    def rope(self, x):  # x [B, H, T, hd], rotate-half convention
        hd, t = x.shape[-1], x.shape[-2]
        inv = self.s.rope_theta ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd)
        ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = torch.cos(ang), torch.sin(ang)
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def attention(self, x, prefix):
        b, t, d = x.shape
        h = self.s.n_heads
        qkv = self.linear(self.norm(x, prefix + "ln_1"), prefix + "attn.c_attn")
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in qkv.split(d, -1))
        if self.s.positions == self.pb.Model.ROPE:
            q, k = self.rope(q), self.rope(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        att = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        return x + self.linear(att.transpose(1, 2).reshape(b, t, d), prefix + "attn.c_proj")

    def mlp(self, r, prefix, norm_prefix=None):
        """r + proj(act(fc(ln_2(r)))); ln_2 from norm_prefix (default: prefix's own)."""
        hid = self.linear(self.norm(r, (norm_prefix or prefix) + "ln_2"), prefix + "mlp.c_fc")
        if self.s.activation == self.pb.Model.SWIGLU:
            act = F.silu(hid[..., :self.d_ffn]) * hid[..., self.d_ffn:]
        else:
            act = F.gelu(hid, approximate="tanh")
        return r + self.linear(act, prefix + "mlp.c_proj")

    def head_logits(self, x, norm_prefix, head_name, temperature):
        if norm_prefix:
            x = self.norm(x, norm_prefix)
        return x @ self.p[head_name].T / temperature

    def head(self, x, norm_prefix, head_name, temperature, dynamic, targets, mask):
        logits = self.head_logits(x, norm_prefix, head_name, temperature)
        flat = logits.reshape(-1, logits.shape[-1])
        ce = F.cross_entropy(flat, targets.reshape(-1), reduction="none")
        if dynamic:
            # EE-LLM's early_exit_processing: each token's loss times the exit's
            # largest probability, computed under no_grad.
            with torch.no_grad():
                confidence = F.softmax(flat, dim=-1).max(dim=-1).values
            ce = ce * confidence
        m = mask.reshape(-1)
        return (ce * m).sum() / m.sum()

    def losses(self, tokens, targets, mask):
        """Each exit's training loss: mean cross-entropy, weighted per token by the
        exit's confidence for dynamic_weight exits (spec order, the final head last)."""
        return [self.head(*h, targets, mask) for h in self.heads(tokens)]

    def logits(self, tokens):
        """Each exit's logits divided by its temperature (spec order, the final head last)."""
        return [self.head_logits(*h[:4]) for h in self.heads(tokens)]

    def heads(self, tokens):
        """Per exit: the hidden state it reads, its norm, head tensor, temperature and
        whether its loss is dynamically weighted."""
        s = self.s
        final_head = "transformer.wte.weight" if s.tie_embeddings else "lm_head.weight"
        x = self.p["transformer.wte.weight"][tokens]
        if s.positions == self.pb.Model.LEARNED:
            x = x + self.p["transformer.wpe.weight"][: tokens.shape[1]]
        out = [None] * (len(s.exits) + 1)
        for i in range(s.n_layers):
            prefix = f"transformer.h.{i}."
            r = self.attention(x, prefix)
            x = self.mlp(r, prefix)
            for k, e in enumerate(s.exits):
                if e.layer != i + 1:
                    continue
                ep = f"exits.{k}."
                z = x
                if e.structure == self.pb.Exit.MLP:
                    # LAYER_NORM_OUTPUT: the branch reads the layer's own ln_2(r).
                    shared = e.mlp_input == self.pb.Exit.LAYER_NORM_OUTPUT
                    z = self.mlp(r, ep, prefix if shared else None)
                elif e.structure == self.pb.Exit.BLOCK:
                    z = self.mlp(self.attention(x, ep + "h."), ep + "h.")
                norm = None if e.structure == self.pb.Exit.PLAIN else ep + "ln_f"
                head = final_head if e.tied else ep + "lm_head.weight"
                out[k] = (z, norm, head, e.temperature, e.dynamic_weight)
        out[-1] = (x, "transformer.ln_f", final_head, 1.0, False)
        return out


class Errors:
    """Worst relative error per group: max |eellm - torch| / max |torch| of each array."""

    def __init__(self):
        self.worst = {}

    def record(self, group, got, want):
        got, want = np.asarray(got), np.asarray(want)
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        self.worst[group] = max(self.worst.get(group, 0.0), err)

    def report(self, name):
        """Prints each group's figure; True when all are within TOLERANCE."""
        for group, err in self.worst.items():
            verdict = "ok" if err <= TOLERANCE else "FAIL"
            print(f"{name}: {group:<22} max relative error {err:.2e} {verdict}")
        return all(err <= TOLERANCE for err in self.worst.values())


def group_of(name):
    if name.startswith("exits."):
        return "exits." + name.split(".")[1]
    if ".h." in name:
        return "layers"
    if "wte" in name or "wpe" in name:
        return "embeddings"
    return "final head"


def main():
    run_dir = sys.argv[1]
    weights, meta = read_safetensors(os.path.join(run_dir, "model.safetensors"))
    step, _ = read_safetensors(os.path.join(run_dir, "step.safetensors"))
    spec, pb = load_spec(meta)
    model = EarlyExitModel(spec, pb, weights)
    weights_k = [e.loss_weight for e in spec.exits] + [1.0]
    tokens, targets, mask = step["tokens"], step["targets"], step["mask"]
    n_micro = tokens.shape[0]
    total = 0
    losses = np.zeros(len(weights_k))
    for mi in range(n_micro):
        per_exit = model.losses(torch.tensor(tokens[mi], dtype=torch.long),
                                torch.tensor(targets[mi], dtype=torch.long),
                                torch.tensor(mask[mi], dtype=torch.float64))
        losses += np.array([l.item() for l in per_exit]) / n_micro
        total = total + sum(w * l for w, l in zip(weights_k, per_exit)) / n_micro
    total.backward()

    errors = Errors()
    for got, want in zip(step["losses"], losses):
        errors.record("losses", [got], [want])
    for name, p in model.p.items():
        errors.record("grad " + group_of(name), step["grad." + name], p.grad.numpy())
    print(f"{spec.name}: per-exit losses eellm {np.array2string(step['losses'], precision=6)}"
          f" torch {np.array2string(losses, precision=6)}")
    sys.exit(0 if errors.report(spec.name) else 1)


if __name__ == "__main__":
    main()
