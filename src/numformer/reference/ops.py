"""Each op written with PyTorch's own functions, independently of numformer's code: the oracle
that the op table (numformer.ops.table) compares forward values and autograd gradients with."""

import math

import torch
import torch.nn.functional as F


def causal_mask(Tq, Tk):
    """Bottom-right aligned causal mask, spelt out: query i sees keys j <= Tk - Tq + i."""
    return torch.tensor([[j <= Tk - Tq + i for j in range(Tk)] for i in range(Tq)])


def attention(q, k, v, causal=False, mask=None, dropout_p=0.0):
    """softmax(q kᵀ/√d + mask) v with −inf masking; a row with no allowed key gives 0."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        allowed = allowed & causal_mask(Tq, Tk)
    if mask is not None:
        allowed = allowed & mask
    allowed = allowed.expand(s.shape)
    any_key = allowed.any(dim=-1, keepdim=True)
    s = s.masked_fill(~allowed, float("-inf"))
    s = torch.where(any_key, s, torch.zeros_like(s))      # placeholder for empty rows...
    return (torch.softmax(s, dim=-1) * any_key) @ v        # ...whose probabilities are then 0


def sdpa(q, k, v, causal=False, mask=None, dropout_p=0.0):
    """PyTorch's own fused attention, with the causal mask passed explicitly."""
    allowed = mask
    if causal:
        c = causal_mask(q.shape[-2], k.shape[-2])
        allowed = c if allowed is None else c & allowed
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def mha(q, k, v, n_head, causal=True, mask=None, n_kv_head=None, rope_theta=None):
    """Multi-head attention between the projections: q (B, T, C) split into n_head heads and k, v
    into n_kv_head heads with torch's view and transpose, q and k rotated by `rope` when rope_theta
    is given, PyTorch's own fused attention over them (its enable_gqa shares each key/value head
    among n_head / n_kv_head query heads), heads concatenated."""
    B, T, C = q.shape
    hs = C // n_head

    def heads(a):
        return a.view(B, T, a.shape[-1] // hs, hs).transpose(1, 2)    # (B, heads, T, hs)

    q, k, v = heads(q), heads(k), heads(v)
    if rope_theta is not None:
        q, k = rope(q, rope_theta), rope(k, rope_theta)
    allowed = mask
    if causal:
        c = causal_mask(T, T)
        allowed = c if allowed is None else c & allowed
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=k.shape[1] != n_head)
    return y.transpose(1, 2).reshape(B, T, C)


def rope(x, theta=10_000.0, start=0):
    """Rotary embedding as complex multiplication: the pair (x_i, x_{i+hs/2}) is the complex number
    x_i + j·x_{i+hs/2}, turned by e^(j·p·θ^(−2i/hs)) at position p (Meta's Llama code multiplies
    neighbours (x_2i, x_2i+1) the same way; Hugging Face pairs the halves)."""
    T, hs = x.shape[-2:]
    half = hs // 2
    omega = theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    angle = torch.arange(start, start + T, dtype=torch.float64)[:, None] * omega      # (T, hs/2)
    turn = torch.polar(torch.ones_like(angle), angle)                                 # e^(j a), complex128
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def rmsnorm(x, weight, eps=1e-6):
    return F.rms_norm(x, x.shape[-1:], weight, eps)


def swiglu(gate, up):
    """SiLU(gate) ⊙ up, with PyTorch's SiLU."""
    return F.silu(gate) * up


def linear(x, weight, bias):
    return F.linear(x, weight, bias)


def lora(x, weight, bias, lora_a, lora_b, alpha=1.0, frozen=False):
    """A linear map plus its low-rank adapter, each a plain torch Linear: W x + b + (α/r)·B(A x)."""
    return F.linear(x, weight, bias) + (alpha / lora_a.shape[0]) * F.linear(F.linear(x, lora_a), lora_b)


def embedding(ids, table):
    return F.embedding(ids, table)


def layernorm(x, weight, bias, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def gelu(x, form="tanh"):
    return F.gelu(x, approximate={"tanh": "tanh", "exact": "none"}[form])


def softmax(x, axis=-1):
    return torch.softmax(x, dim=axis)


def cross_entropy(logits, targets, ignore_index=-1):
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=ignore_index)


def identity(x, p=0.0, training=True):
    """dropout with p = 0 or in evaluation"""
    return x


def residual(x, fx):
    return x + fx
