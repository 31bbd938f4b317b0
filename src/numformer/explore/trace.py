"""One forward pass of a GPT or a Llama, through numformer.ops, that keeps what the explorer draws.

The GPT (numformer.model.gpt):

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

The Llama (numformer.model.llama), by the same plan with its own ops:

    x_0     = embed_tokens[ids]               no position table: positions are RoPE's, inside attention
    for each block l = 1 .. n_layer:
        h   = RMSNorm_1(x)
        q, k, v = q_proj(h), k_proj(h), v_proj(h)       q (T, nh·hs); k, v (T, nkv·hs)
        A_l = the probabilities of ops.mha with RoPE     (nh, T, T), one per QUERY head: kept;
              query head h reads key/value head h // (nh / nkv) (grouped-query attention)
        x   = x + o_proj(Concat_h(A_l v))
        x_l = x + down_proj(SwiGLU(gate_proj(h'), up_proj(h'))),  h' = RMSNorm_2(x)   kept
    logits  = RMSNorm_f(x_n) · W_headᵀ         W_head = lm_head, or embed_tokens when tied

Its attention is ops.mha itself (reference op set, keep_probs=True): the rotation of q and k
(ops.rope), the sharing of key/value heads and the softmax are the op's, and the trace reads the
probabilities out of its cache. Weights are read with `model.tensor`, so a quantized Llama is
traced with its weights as stored (the reference ops dequantize them for each product).

The logit lens runs the final norm (LayerNorm, or a Llama's RMSNorm) and the head on each x_l:
what the model would predict if it stopped after block l.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from numformer.model.adapters import merged_state_dict
from numformer.model.params import BIAS, GPT2, LLAMA, WEIGHT
from numformer.ops import embedding, gelu, layernorm, linear, mha, rmsnorm, softmax, swiglu


@dataclass
class Trace:
    ids: np.ndarray            # (T,) token ids
    positions: np.ndarray | None   # (T, C) the position table as added to the token embeddings;
                                   # None for a Llama (RoPE rotates q and k instead)
    attention: list            # n_layer arrays (nh, T, T): row i = query i, softmax weights over keys;
                               # one per query head
    residual: np.ndarray       # (n_layer + 1, T, C): x_0 (embeddings + positions), then after each block
    logits: np.ndarray         # (T, V)
    kv_heads: np.ndarray | None = None   # Llama: (nh,) the key/value head each query head reads


def position_table(model, T: int) -> np.ndarray:
    """The (T, C) positions the model adds to its token embeddings: the learned wpe, or its fixed
    sinusoidal table `model.pe` (P divided as the config's sinusoidal_form says; model/gpt.py,
    "Positions")."""
    if model.config.pos_encoding == "learned":
        return model.params[GPT2.name("wpe")][:T]
    return model.pe[:T]


def _ids(model, ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    T, block = ids.shape[0], model.config.block_size
    if not 1 <= T <= block:
        raise ValueError(f"trace: need 1 to block_size = {block} tokens, got {T}")
    return ids


def trace(model, ids) -> Trace:
    """Run the model (a GPT or a Llama) on one sequence of token ids (T,), T <= block_size, and
    keep every layer's attention probabilities, the residual stream after each block, and the logits.
    A model with LoRA adapters is traced with each adapter merged into its weight (W + (α/r)·B A)."""
    model = without_adapters(model)
    if model.config.family == "llama":
        return trace_llama(model, ids)
    cfg, p = model.config, model.params
    ids = _ids(model, ids)
    T = ids.shape[0]
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


def without_adapters(model):
    """The model itself, or for one with LoRA adapters a copy of the same class whose weights have
    them merged in (numformer.model.adapters.merged_state_dict): the function it computes, through
    the plain weights the trace reads."""
    if getattr(model, "lora", None) is None:
        return model
    plain = type(model)(model.config, dtype=model.dtype, init=False, ops=model.ops_name)
    plain.load_state_dict(merged_state_dict(model), source="the model with its adapters merged")
    plain.tokenizer = model.tokenizer
    return plain.eval()


def trace_llama(model, ids) -> Trace:
    """`trace` for a Llama (numformer.model.llama): attention per query head, n_head of them."""
    cfg = model.config
    ids = _ids(model, ids)
    T, nh, nkv, eps = ids.shape[0], cfg.n_head, cfg.n_kv_head, cfg.rms_norm_eps

    def w(layer, i):                                                   # a layer's weight and bias (or None)
        bias = LLAMA.name(layer, BIAS, i)
        return model.tensor(LLAMA.name(layer, WEIGHT, i)), model.tensor(bias) if bias in model.params.views else None

    def gain(layer, i):
        return model.params[LLAMA.name(layer, WEIGHT, i)]

    x, _ = embedding.forward(ids[None], model.tensor(model.token_embedding))   # (1, T, C): no positions
    residual, attention = [x[0]], []
    for i in range(cfg.n_layer):
        h, _ = rmsnorm.forward(x, gain("input_layernorm", i), eps)
        q, _ = linear.forward(h, *w("self_attn.q_proj", i))           # (1, T, nh·hs)
        k, _ = linear.forward(h, *w("self_attn.k_proj", i))           # (1, T, nkv·hs)
        v, _ = linear.forward(h, *w("self_attn.v_proj", i))           # (1, T, nkv·hs)
        y, c = mha.forward(q, k, v, nh, n_kv_head=nkv, rope_theta=cfg.rope_theta, causal=T > 1,
                           keep_probs=True)                            # as the model calls it; P kept
        attention.append(c.attention.probs.reshape(nh, T, T))         # (1, nkv, g, T, T) grouped -> (nh, T, T)
        a, _ = linear.forward(y, *w("self_attn.o_proj", i))           # (1, T, C)
        x = x + a
        h, _ = rmsnorm.forward(x, gain("post_attention_layernorm", i), eps)
        g, _ = linear.forward(h, *w("mlp.gate_proj", i))              # (1, T, H)
        u, _ = linear.forward(h, *w("mlp.up_proj", i))                # (1, T, H)
        m, _ = swiglu.forward(g, u)                                    # SiLU(g) ⊙ u
        d, _ = linear.forward(m, *w("mlp.down_proj", i))              # (1, T, C)
        x = x + d
        residual.append(x[0])
    residual = np.stack(residual)                                       # (n_layer + 1, T, C)
    return Trace(ids=ids, positions=None, attention=attention, residual=residual, logits=head(model, x[0]),
                 kv_heads=kv_heads(cfg))


def kv_heads(cfg) -> np.ndarray:
    """(n_head,) the key/value head each query head reads: h // (n_head / n_kv_head)."""
    return np.arange(cfg.n_head) // (cfg.n_head // cfg.n_kv_head)


def head(model, x) -> np.ndarray:
    """logits = LN_f(x) · wteᵀ (a Llama: RMSNorm_f(x) · W_headᵀ) for a residual stream x (..., C):
    the model's last two steps."""
    cfg, p = model.config, model.params
    if cfg.family == "llama":
        h, _ = rmsnorm.forward(x, p[LLAMA.name("model.norm")], cfg.rms_norm_eps)
        logits, _ = linear.forward(h, model.tensor(model.head_weight))   # (..., V): lm_head, or tied
        return logits
    h, _ = layernorm.forward(x, p[GPT2.name("ln_f", WEIGHT)],
                             p[GPT2.name("ln_f", BIAS)] if cfg.bias else None, cfg.layer_norm_eps)
    logits, _ = linear.forward(h, p[GPT2.name("wte")])                  # (..., V), tied to wte
    return logits
