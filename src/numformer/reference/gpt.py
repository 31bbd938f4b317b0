"""A reference GPT written in plain PyTorch, the oracle for numformer's GPT.

It is written independently of numformer (torch.nn modules and autograd, no numformer code) and
follows the same architecture: token embedding plus positions (a learned table, or the sin/cos
table divided by √C), pre-LayerNorm blocks with fused-QKV causal attention and a C -> 4C -> GELU -> C MLP,
a final LayerNorm and an LM head tied to the token embedding. Parameter names and layouts match
numformer's (Hugging Face GPT-2 names, PyTorch Linear layout), so a state dict moves across as is.

The benchmarks (benchmarks/train_speed.py) import this module too: it is the "PyTorch eager" and
"torch.compile" side of the side-by-side runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal_table(T: int, C: int, dtype=torch.float64) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/C)), PE[pos, 2i+1] = cos(pos / 10000^(2i/C))."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, C, 2, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), two_i / C)
    pe = torch.zeros(T, C, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : C // 2])
    return pe.to(dtype)


class Block(nn.Module):
    def __init__(self, C, n_head, bias, dropout, gelu, eps):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.ln_1 = nn.LayerNorm(C, eps=eps, bias=bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(C, 3 * C, bias=bias)
        self.attn.c_proj = nn.Linear(C, C, bias=bias)
        self.ln_2 = nn.LayerNorm(C, eps=eps, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(C, 4 * C, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * C, C, bias=bias)
        self.gelu = "tanh" if gelu == "tanh" else "none"
        self.drop = nn.Dropout(dropout)

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.attn.c_proj(y)

    def forward(self, x):
        x = x + self.drop(self.attention(self.ln_1(x)))
        x = x + self.drop(self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate=self.gelu)))
        return x


class ReferenceGPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout=0.0, bias=True,
                 pos_encoding="sinusoidal", gelu="tanh", layer_norm_eps=1e-5, sinusoidal_form="scaled"):
        super().__init__()
        self.block_size = block_size
        self.pos_encoding = pos_encoding
        # x0 = scale · wte[idx] + P / divisor: "scaled" (numformer's default), "paper", "article"
        self.scale, divisor = {"scaled": (1.0, math.sqrt(n_embd)), "paper": (math.sqrt(n_embd), 1.0),
                               "article": (1.0, 1.0)}[sinusoidal_form]
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab_size, n_embd)
        if pos_encoding == "learned":
            self.transformer.wpe = nn.Embedding(block_size, n_embd)
        else:
            self.register_buffer("pe", sinusoidal_table(block_size, n_embd) / divisor, persistent=False)
        self.transformer.drop = nn.Dropout(dropout)
        self.transformer.h = nn.ModuleList(
            Block(n_embd, n_head, bias, dropout, gelu, layer_norm_eps) for _ in range(n_layer))
        self.transformer.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_eps, bias=bias)

    @classmethod
    def from_config(cls, cfg):
        """Build from a numformer GPTConfig (or any object with the same attributes)."""
        return cls(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout, cfg.bias,
                   cfg.pos_encoding, cfg.gelu, cfg.layer_norm_eps, getattr(cfg, "sinusoidal_form", "scaled"))

    def load_numpy(self, tensors: dict):
        """Copy a numformer state dict (name -> ndarray) into this module, checking names."""
        own = dict(self.named_parameters())
        assert set(own) == set(tensors), (sorted(set(own) ^ set(tensors)))
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(torch.from_numpy(tensors[name].copy()))
        return self

    def forward(self, idx, targets=None):
        B, T = idx.shape
        tok = self.transformer.wte(idx)
        if self.pos_encoding == "learned":
            pos = self.transformer.wpe(torch.arange(T, device=idx.device))
        else:
            pos = self.pe[:T].to(tok.dtype)
        x = self.transformer.drop(tok * self.scale + pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = x @ self.transformer.wte.weight.T   # tied head
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-1)
        return logits, loss

    def configure_adamw(self, lr, weight_decay, betas, eps=1e-8):
        """AdamW with weight decay on parameters of two or more dimensions only."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
