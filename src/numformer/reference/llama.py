"""A reference Llama written in plain PyTorch, the oracle for numformer's Llama.

It is written independently of numformer (torch.nn modules and autograd, no numformer code) and
follows the architecture of Hugging Face's LlamaForCausalLM: token embedding, pre-RMSNorm blocks
(torch.nn.RMSNorm) with causal attention whose q and k are rotated by RoPE (rotate-half pairing,
the cos and sin of the angles computed in float64), n_kv_head key/value heads each repeated for
its n_head / n_kv_head query heads (Hugging Face's repeat_kv), a SwiGLU MLP
down_proj(silu(gate_proj(x)) * up_proj(x)), a final RMSNorm and an LM head, its own or tied to the
embedding. Biases only on q_proj, k_proj and v_proj, and only with attention_bias (Qwen2).
Parameter names and layouts are Hugging Face's, as numformer's are, so a state dict moves across
as is. Dropout sits where numformer's Llama has it (the embedding, the attention probabilities,
both residual branches).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate_half(x):
    """[x₁, x₂] -> [−x₂, x₁] over the last axis."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope_tables(T, hs, theta, dtype):
    """cos and sin (T, hs) of the angles p · θ^(−2i/hs), each written twice (once per half)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)          # (T, hs/2)
    emb = torch.cat([freqs, freqs], dim=-1)                                        # (T, hs)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, C, n_head, n_kv_head, theta, bias, dropout):
        super().__init__()
        self.n_head, self.n_kv_head, self.hs, self.theta, self.dropout = n_head, n_kv_head, C // n_head, theta, dropout
        self.q_proj = nn.Linear(C, n_head * self.hs, bias=bias)
        self.k_proj = nn.Linear(C, n_kv_head * self.hs, bias=bias)
        self.v_proj = nn.Linear(C, n_kv_head * self.hs, bias=bias)
        self.o_proj = nn.Linear(n_head * self.hs, C, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hs).transpose(1, 2)        # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.hs).transpose(1, 2)     # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.hs).transpose(1, 2)
        cos, sin = rope_tables(T, self.hs, self.theta, x.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = self.n_head // self.n_kv_head
        k = k.repeat_interleave(group, dim=1)                                      # (B, nh, T, hs): repeat_kv
        v = v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.gate_proj = nn.Linear(C, H, bias=False)
        self.up_proj = nn.Linear(C, H, bias=False)
        self.down_proj = nn.Linear(H, C, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.n_embd
        self.input_layernorm = nn.RMSNorm(C, eps=cfg.rms_norm_eps)
        self.self_attn = Attention(C, cfg.n_head, cfg.n_kv_head, cfg.rope_theta, cfg.attention_bias, cfg.dropout)
        self.post_attention_layernorm = nn.RMSNorm(C, eps=cfg.rms_norm_eps)
        self.mlp = MLP(C, cfg.n_hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        x = x + self.drop(self.self_attn(self.input_layernorm(x)))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class ReferenceLlama(nn.Module):
    def __init__(self, cfg):
        """cfg: a numformer LlamaConfig, or any object with its attributes."""
        super().__init__()
        self.tied = cfg.tie_embeddings
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.model.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.model.norm = nn.RMSNorm(cfg.n_embd, eps=cfg.rms_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        if not self.tied:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg)

    def load_numpy(self, tensors: dict):
        """Copy a numformer state dict (name -> ndarray) into this module, checking names."""
        own = dict(self.named_parameters())
        assert set(own) == set(tensors), sorted(set(own) ^ set(tensors))
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(torch.from_numpy(tensors[name].copy()))
        return self

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.drop(self.model.embed_tokens(idx))
        for block in self.model.layers:
            x = block(x)
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        logits = x @ head.T
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
