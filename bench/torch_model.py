"""The eellm early-exit model written as a PyTorch user would write it:
nn.Module layers (nn.Embedding, nn.Linear, nn.LayerNorm), fused
F.scaled_dot_product_attention where the installed torch has it (a causal
masked softmax otherwise, as nanoGPT falls back to), weights tied by sharing
the embedding's Parameter. The benchmarks' PyTorch peer: same shapes, exits and
loss as eellm's model (tests/torch_parity.py is the float64 parity reference).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(spec, pb):
    # nn.LayerNorm keeps its bias even for bias-free models (torch 1.13 has no
    # bias option): a vector add per row, nothing a timing can see.
    if spec.norm == pb.Model.RMSNORM:
        return RMSNorm(spec.d_model, spec.norm_eps)
    return nn.LayerNorm(spec.d_model, eps=spec.norm_eps)


def rope_tables(spec, t, device):
    hd = spec.d_model // spec.n_heads
    inv = spec.rope_theta ** (-torch.arange(0, hd // 2, device=device, dtype=torch.float32) * 2 / hd)
    ang = torch.arange(t, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cos(ang), torch.sin(ang)


def rotate(x, cos, sin):  # rotate-half convention, x [B, H, T, hd]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Attention(nn.Module):
    def __init__(self, spec, pb):
        super().__init__()
        d = spec.d_model
        self.h, self.rope = spec.n_heads, spec.positions == pb.Model.ROPE
        self.c_attn = nn.Linear(d, 3 * d, bias=spec.bias)
        self.c_proj = nn.Linear(d, d, bias=spec.bias)

    def forward(self, x, rope):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2)
                   for z in self.c_attn(x).split(d, -1))
        if self.rope:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if HAVE_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.h)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, spec, pb):
        super().__init__()
        d, f = spec.d_model, spec.ffn_size or 4 * spec.d_model
        self.swiglu = spec.activation == pb.Model.SWIGLU
        self.c_fc = nn.Linear(d, 2 * f if self.swiglu else f, bias=spec.bias)
        self.c_proj = nn.Linear(f, d, bias=spec.bias)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, -1)
            return self.c_proj(F.silu(gate) * up)
        return self.c_proj(F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, spec, pb):
        super().__init__()
        self.ln_1, self.attn = make_norm(spec, pb), Attention(spec, pb)
        self.ln_2, self.mlp = make_norm(spec, pb), MLP(spec, pb)

    def forward(self, x, rope):
        r = x + self.attn(self.ln_1(x), rope)
        return r + self.mlp(self.ln_2(r)), r


class Exit(nn.Module):
    """An exit's body (PLAIN: none, NORM: a norm, MLP: a residual MLP then a
    norm, BLOCK: a layer then a norm) and head (tied: the embedding's weight)."""

    def __init__(self, spec, pb, e, wte):
        super().__init__()
        self.structure, self.temperature = e.structure, e.temperature or 1.0
        self.mlp_shared = e.structure == pb.Exit.MLP and e.mlp_input == pb.Exit.LAYER_NORM_OUTPUT
        if e.structure == pb.Exit.MLP:
            self.ln_2 = None if self.mlp_shared else make_norm(spec, pb)
            self.mlp = MLP(spec, pb)
        if e.structure == pb.Exit.BLOCK:
            self.h = Block(spec, pb)
        self.ln_f = None if e.structure == pb.Exit.PLAIN else make_norm(spec, pb)
        self.lm_head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        if e.tied:
            self.lm_head.weight = wte.weight

    def forward(self, x, r, layer, rope, pb):
        z = x
        if self.structure == pb.Exit.MLP:
            z = r + self.mlp(layer.ln_2(r) if self.mlp_shared else self.ln_2(r))
        elif self.structure == pb.Exit.BLOCK:
            z = self.h(x, rope)[0]
        if self.ln_f is not None:
            z = self.ln_f(z)
        return self.lm_head(z) / self.temperature


class EarlyExitGPT(nn.Module):
    def __init__(self, spec, pb):
        super().__init__()
        self.spec, self.pb = spec, pb
        self.wte = nn.Embedding(spec.vocab_size, spec.d_model)
        self.wpe = nn.Embedding(spec.context_length, spec.d_model) \
            if spec.positions == pb.Model.LEARNED else None
        self.h = nn.ModuleList(Block(spec, pb) for _ in range(spec.n_layers))
        self.ln_f = make_norm(spec, pb)
        self.lm_head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.exits = nn.ModuleList(Exit(spec, pb, e, self.wte) for e in spec.exits)
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens):
        """Each exit's logits (spec order), then the final head's."""
        t = tokens.shape[1]
        x = self.wte(tokens)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(t, device=tokens.device))
        rope = rope_tables(self.spec, t, tokens.device) \
            if self.spec.positions == self.pb.Model.ROPE else None
        logits = [None] * len(self.exits)
        for i, layer in enumerate(self.h):
            x, r = layer(x, rope)
            for k, e in enumerate(self.spec.exits):
                if e.layer == i + 1:
                    logits[k] = self.exits[k](x, r, layer, rope, self.pb)
        return logits + [self.lm_head(self.ln_f(x))]

    def loss(self, tokens, targets):
        """The training objective: the exits' and the final head's mean
        cross-entropies, weighted by their loss weights (the final head's is 1;
        dynamic_weight exits are weighted statically here)."""
        weights = [e.loss_weight for e in self.spec.exits] + [1.0]
        return sum(w * F.cross_entropy(z.flatten(0, 1), targets.flatten())
                   for w, z in zip(weights, self(tokens)))
