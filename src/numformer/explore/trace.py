"""One forward pass of a GPT, through numformer.ops, that keeps what the explorer draws.

    x_0     = wte[ids] + P                    token embedding + positions (P/√C or the learned wpe)
    for each block l = 1 .. n_layer:
        S   = q kᵀ / √hs, −inf above the diagonal    (nh, T, T) scores of every head
        A_l = softmax(S)                      (nh, T, T) attention probabilities: kept
        x   = x + c_proj(Concat_h(A_l v))
        x_l = x + MLP(LN_2(x))                (T, C) the residual stream after block l: kept
    logits  = LN_f(x_n) · wteᵀ                 (T, V)

The pass is written here, from the model's parameters (by their Hugging Face names) and the
public ops, rather than read out of the GPT class, so that it shows every formula it runs. It
must give the model's own logits (tests/explore checks `trace(model, ids).logits` against
`model.forward`), so the picture cannot drift from the model it claims to show.

The logit lens runs the final LayerNorm and the tied head on each x_l: what the model would
predict if it stopped after block l.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from numformer.ops import embedding, gelu, layernorm, linear, positional, softmax


@dataclass
class Trace:
    ids: np.ndarray            # (T,) token ids
    positions: np.ndarray      # (T, C) the position table as added to the token embeddings
    attention: list            # n_layer arrays (nh, T, T): row i = query i, softmax weights over keys
    residual: np.ndarray       # (n_layer + 1, T, C): x_0 (embeddings + positions), then after each block
    logits: np.ndarray         # (T, V)


def position_table(model, T: int) -> np.ndarray:
    """The (T, C) positions the model adds to its token embeddings: the learned wpe, or the
    sinusoidal table divided by √C (see model/gpt.py, "Positions")."""
    cfg = model.config
    wte = model.params["transformer.wte.weight"]
    if cfg.pos_encoding == "learned":
        return model.params["transformer.wpe.weight"][:T]
    return (positional.sinusoidal(T, cfg.n_embd) / math.sqrt(cfg.n_embd)).astype(wte.dtype)


def trace(model, ids) -> Trace:
    """Run the model on one sequence of token ids (T,), T <= block_size, and keep every layer's
    attention probabilities, the residual stream after each block, and the logits."""
    cfg, p = model.config, model.params
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    T = ids.shape[0]
    if not 1 <= T <= cfg.block_size:
        raise ValueError(f"trace: need 1 to block_size = {cfg.block_size} tokens, got {T}")
    C, nh, hs, eps = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.layer_norm_eps
    wte = p["transformer.wte.weight"]

    def bias(name):
        return p[name] if cfg.bias else None

    pos = position_table(model, T)                                     # (T, C)
    tok, _ = embedding.forward(ids, wte)                               # (T, C)
    scale = getattr(model, "embed_scale", 1.0)
    x = tok * scale + pos if scale != 1.0 else tok + pos               # (T, C)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)                 # key j > query i
    residual, attention = [x], []
    for i in range(cfg.n_layer):
        w = f"transformer.h.{i}."
        h, _ = layernorm.forward(x, p[w + "ln_1.weight"], bias(w + "ln_1.bias"), eps)
        qkv, _ = linear.forward(h, p[w + "attn.c_attn.weight"], bias(w + "attn.c_attn.bias"))  # (T, 3C)
        q, k, v = qkv.reshape(T, 3, nh, hs).transpose(1, 2, 0, 3)     # each (nh, T, hs)
        s = (q * (1.0 / math.sqrt(hs))) @ k.transpose(0, 2, 1)         # (nh, T, T) scores
        s[:, future] = -np.inf                                          # the causal mask
        a, _ = softmax.forward(s)                                       # (nh, T, T)
        attention.append(a)
        y = (a @ v).transpose(1, 0, 2).reshape(T, C)                    # (T, C) heads concatenated
        y, _ = linear.forward(y, p[w + "attn.c_proj.weight"], bias(w + "attn.c_proj.bias"))
        x = x + y
        h, _ = layernorm.forward(x, p[w + "ln_2.weight"], bias(w + "ln_2.bias"), eps)
        f, _ = linear.forward(h, p[w + "mlp.c_fc.weight"], bias(w + "mlp.c_fc.bias"))      # (T, 4C)
        g, _ = gelu.forward(f, cfg.gelu)                                  # "tanh" or "exact"
        m, _ = linear.forward(g, p[w + "mlp.c_proj.weight"], bias(w + "mlp.c_proj.bias"))  # (T, C)
        x = x + m
        residual.append(x)
    residual = np.stack(residual)                                       # (n_layer + 1, T, C)
    return Trace(ids=ids, positions=pos, attention=attention, residual=residual,
                 logits=head(model, x))


def head(model, x) -> np.ndarray:
    """logits = LN_f(x) · wteᵀ for a residual stream x (..., C): the model's last two steps."""
    cfg, p = model.config, model.params
    h, _ = layernorm.forward(x, p["transformer.ln_f.weight"],
                             p["transformer.ln_f.bias"] if cfg.bias else None, cfg.layer_norm_eps)
    logits, _ = linear.forward(h, p["transformer.wte.weight"])          # (..., V), tied to wte
    return logits
