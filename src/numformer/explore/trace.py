"""One forward pass of a GPT, through numformer.ops, that keeps what the explorer draws.

    x_0     = s·wte[ids] + P'                 token embedding + positions (the learned wpe, or the
                                              sinusoidal table as the config's sinusoidal_form adds it)
    for each block l = 1 .. n_layer:
        S   = q kᵀ / √hs, −inf above the diagonal    (nh, T, T) scores of every head
        A_l = softmax(S)                      (nh, T, T) attention probabilities: kept
        x   = x + c_proj(Concat_h(A_l v))
        x_l = x + MLP(LN_2(x))                (T, C) the residual stream after block l: kept
    logits  = LN_f(x_n) · wteᵀ                 (T, V)

The pass is written here, from the model's parameters (by their Hugging Face names,
numformer.model.params.GPT2) and the public ops, rather than read out of the GPT class, so that it shows every formula it runs. It
must give the model's own logits (tests/explore checks `trace(model, ids).logits` against
`model.forward`), so the picture cannot drift from the model it claims to show.

The logit lens runs the final LayerNorm and the tied head on each x_l: what the model would
predict if it stopped after block l.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from numformer.model.params import BIAS, GPT2, WEIGHT
from numformer.ops import embedding, gelu, layernorm, linear, softmax


@dataclass
class Trace:
    ids: np.ndarray            # (T,) token ids
    positions: np.ndarray      # (T, C) the position table as added to the token embeddings
    attention: list            # n_layer arrays (nh, T, T): row i = query i, softmax weights over keys
    residual: np.ndarray       # (n_layer + 1, T, C): x_0 (embeddings + positions), then after each block
    logits: np.ndarray         # (T, V)


def position_table(model, T: int) -> np.ndarray:
    """The (T, C) positions the model adds to its token embeddings: the learned wpe, or its fixed
    sinusoidal table `model.pe` (P divided as the config's sinusoidal_form says; model/gpt.py,
    "Positions")."""
    if model.config.pos_encoding == "learned":
        return model.params[GPT2.name("wpe")][:T]
    return model.pe[:T]


def trace(model, ids) -> Trace:
    """Run the model on one sequence of token ids (T,), T <= block_size, and keep every layer's
    attention probabilities, the residual stream after each block, and the logits."""
    cfg, p = model.config, model.params
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    T = ids.shape[0]
    if not 1 <= T <= cfg.block_size:
        raise ValueError(f"trace: need 1 to block_size = {cfg.block_size} tokens, got {T}")
    C, nh, hs, eps = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.layer_norm_eps

    def w(layer, i=None):                                              # a layer's weight and bias
        return p[GPT2.name(layer, WEIGHT, i)], p[GPT2.name(layer, BIAS, i)] if cfg.bias else None

    pos = position_table(model, T)                                     # (T, C)
    tok, _ = embedding.forward(ids, p[GPT2.name("wte")])               # (T, C)
    scale = model.embed_scale
    x = tok * scale + pos if scale != 1.0 else tok + pos               # (T, C)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)                 # key j > query i
    residual, attention = [x], []
    for i in range(cfg.n_layer):
        h, _ = layernorm.forward(x, *w("ln_1", i), eps)
        qkv, _ = linear.forward(h, *w("attn.c_attn", i))                # (T, 3C)
        q, k, v = qkv.reshape(T, 3, nh, hs).transpose(1, 2, 0, 3)     # each (nh, T, hs)
        s = (q * (1.0 / math.sqrt(hs))) @ k.transpose(0, 2, 1)         # (nh, T, T) scores
        s[:, future] = -np.inf                                          # the causal mask
        a, _ = softmax.forward(s)                                       # (nh, T, T)
        attention.append(a)
        y = (a @ v).transpose(1, 0, 2).reshape(T, C)                    # (T, C) heads concatenated
        y, _ = linear.forward(y, *w("attn.c_proj", i))
        x = x + y
        h, _ = layernorm.forward(x, *w("ln_2", i), eps)
        f, _ = linear.forward(h, *w("mlp.c_fc", i))                      # (T, 4C)
        g, _ = gelu.forward(f, cfg.gelu)                                  # "tanh" or "exact"
        m, _ = linear.forward(g, *w("mlp.c_proj", i))                    # (T, C)
        x = x + m
        residual.append(x)
    residual = np.stack(residual)                                       # (n_layer + 1, T, C)
    return Trace(ids=ids, positions=pos, attention=attention, residual=residual,
                 logits=head(model, x))


def head(model, x) -> np.ndarray:
    """logits = LN_f(x) · wteᵀ for a residual stream x (..., C): the model's last two steps."""
    cfg, p = model.config, model.params
    h, _ = layernorm.forward(x, p[GPT2.name("ln_f", WEIGHT)],
                             p[GPT2.name("ln_f", BIAS)] if cfg.bias else None, cfg.layer_norm_eps)
    logits, _ = linear.forward(h, p[GPT2.name("wte")])                  # (..., V), tied to wte
    return logits
