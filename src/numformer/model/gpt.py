"""A decoder-only GPT composed by hand from numformer's ops.

    x0      = wte[idx] + P                        token embedding + positions (see "Positions" below)
    x0      = Dropout(x0)
    for each of the n_layer blocks (pre-LayerNorm):
        x   = x + Dropout(MHA(LN_1(x)))           causal multi-head self-attention
        x   = x + Dropout(W_2 · GELU(W_1 · LN_2(x)))   the MLP, C -> 4C -> C
    logits  = LN_f(x) · wteᵀ                      the LM head is tied to the token embedding
    loss    = CrossEntropy(logits, targets)

`block_forward` is one block, used by training, evaluation and KV-cached decoding alike;
`block_backward` walks the same block backwards, calling each op's backward in reverse order.
`GPT.forward` runs the stack and keeps each block's cache (the tape); `GPT.backward` adds every
gradient into the flat gradient buffer. Gradients meet in two places, and both are written as
`+=`: at every residual (the skip path and the branch) and at the tied embedding (the LM head and
the lookup). `forward_tape` and `backward_tape` are the same two passes with the tape and the
dropout generator held by the caller instead of the model: the shards of one batch run side by
side that way, one thread each (numformer.parallel.threads).

The model is built on one op set, chosen explicitly: `GPT(config, ops="fast")` (the default, and
what `numformer train` uses) or `ops="reference"` (numformer.ops, the formulas as written). Both
compute the same function (tests/model/test_gpt.py holds them equal in float64).

Memory. Four activations per block are not kept, because backward can make them again bit for
bit: GELU's output (gelu.output_and_slope), the two LayerNorm outputs and LN_f's
(layernorm.output), and attention's probabilities (keep_probs=False).

Adapters. `GPT(config, lora=LoRAConfig(rank, alpha, targets))` gives the layers named in
targets a low-rank adapter (numformer.model.adapters): those layers run ops.lora instead of
ops.linear. A and B live in their own flat buffer, `model.adapters`; `model.trainable` is the
buffer that training updates (the adapters, or without them the parameters) and `model.grads`
has its layout. With adapters the base weights are frozen: backward adds no gradient for them,
and the frozen linear maps skip their dW products.

Quantized weights. `model.quantize("int8")` (or "bf16"; `GPT.load(path, quantize=...)`) stores the
weights of every linear map and the token embedding, which is also the tied LM head, as
numformer.ops.quant's int8 blocks or bf16, for inference (numformer.model.quantized): the
float32 weights are freed, `model.params` keeps the rest (LayerNorms, biases, the learned
position table) in float32, and `model.quantized` has the quantized weights by name. The ops
take them where they took the float32 ones, so the same block_forward runs.

Positions. `pos_encoding="learned"` adds a trained table `wpe` as GPT-2 does. The default,
`"sinusoidal"`, adds the article's fixed table P (formula 2), scaled by `sinusoidal_form`:
"scaled" (the default) is x0 = wte[idx] + P/√C. Read literally ("article"), wte[idx] + P trains
much worse: embeddings initialised at N(0, 0.02) are about 35× smaller than P's entries (RMS 1/√2),
so the first LayerNorm sees mostly position, and the residual stream is 35× larger than GPT-2's.
The original paper ("paper", Vaswani et al. §3.4) multiplies the embedding by √C before adding P;
"scaled" keeps that ratio, √C : 1, and divides both by √C, so the residual stream keeps GPT-2's
scale. docs/positional-encoding.md has the measurements.
"""

from __future__ import annotations

import numpy as np

from numformer.data.tokenizer import from_json
from numformer.interop.gpt2 import read_hf_gpt2
from numformer.model.config import GPTConfig, position_terms
from numformer.model.decoder import Decoder
from numformer.model.params import (BIAS, GPT2, LORA_A, LORA_B, NORM, WEIGHT, FlatParams, gpt_param_shapes,
                                    lora_param_shapes)
from numformer.model.quantized import check_quantize
from numformer.model.serialize import read_gpt, save_gpt
from numformer.ops import op_set


class KVCache:
    """Keys and values of every layer for positions 0..length-1, preallocated to block_size.

    k[l] and v[l] have shape (B, nh, block_size, hs).
    """

    def __init__(self, config: GPTConfig, batch_size: int, dtype):
        shape = (batch_size, config.n_head, config.block_size, config.head_size)
        self.k = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0


# ----------------------------------------------------------------------------- one block

def block_forward(ops, w, x, cfg: GPTConfig, *, drop=0.0, rng=None, kv=None, lora=None):
    """One pre-LayerNorm block: x + Dropout(MHA(LN_1(x))), then x + Dropout(MLP(LN_2(x))).

    w: the block's parameters by short name ("ln_1.weight", ...); x (B, T, C). With kv =
    (K, V, t0), the layer's KV cache (B, nh, block_size, hs) and the position of x's first row,
    ops.mha writes the new keys and values into it and the queries attend to positions 0..t0+T-1.
    With lora = (alpha, {layer: (A, B)}), the base weights are frozen and those layers have
    adapters (see `linear_forward`). Returns (x, cache)."""
    T, C = x.shape[1:]
    c = {}

    def linear(layer, h, key, **kw):
        y, c[key] = linear_forward(ops, w, layer, h, lora, **kw)
        return y

    h, c["ln_1"] = ops.layernorm.forward(x, w["ln_1.weight"], w["ln_1.bias"], cfg.layer_norm_eps)
    qkv = linear("attn.c_attn", h, "c_attn", keep_input=False)   # (B, T, 3C); h from LN_1's cache
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]   # each (B, T, C), views
    y, c["attn"] = ops.mha.forward(q, k, v, cfg.n_head, causal=T > 1,   # one query sees every key before it
                                   dropout_p=drop, rng=rng, kv=kv,
                                   keep_probs=False)              # P from q, k and two numbers per row
    a = linear("attn.c_proj", y, "c_proj_attn")                   # y (B, T, C): the heads concatenated
    a, c["drop_1"] = ops.dropout.forward(a, drop, rng, training=drop > 0)
    x, c["res_1"] = ops.residual.forward(x, a)
    h, c["ln_2"] = ops.layernorm.forward(x, w["ln_2.weight"], w["ln_2.bias"], cfg.layer_norm_eps)
    f = linear("mlp.c_fc", h, "c_fc", keep_input=False)          # (B, T, 4C); h from LN_2's cache
    g, c["gelu"] = ops.gelu.forward(f, form=cfg.gelu)
    m = linear("mlp.c_proj", g, "c_proj", keep_input=False)      # (B, T, C); g is recomputed in backward
    del g
    m, c["drop_2"] = ops.dropout.forward(m, drop, rng, training=drop > 0)
    x, c["res_2"] = ops.residual.forward(x, m)
    return x, c


def block_backward(ops, dx, c, cfg: GPTConfig, add):
    """block_forward walked backwards. dx: the gradient at the block's output; c: its cache, emptied
    as each op's backward uses it; add(layer, dweight, dbias) takes each layer's gradients (dbias
    None where it has no bias, both None where frozen; after them an adapted layer's dA, dB).
    Returns the gradient at the block's input."""
    # x = x_mid + Dropout(MLP(LN_2(x_mid)))
    dx_mid, dm = ops.residual.backward(dx, c.pop("res_2"))
    dm = ops.dropout.backward(dm, c.pop("drop_2"))
    g, slope = ops.gelu.output_and_slope(c.pop("gelu"))           # GELU's output again, and its slope
    dg, *grads = linear_backward(dm, c.pop("c_proj"), x=g)
    del g, dm
    add("mlp.c_proj", *grads)
    df = np.multiply(dg, slope, out=slope)                        # gelu backward: dy ⊙ GELU'(f)
    del dg, slope
    ln_2 = c.pop("ln_2")
    dh, *grads = linear_backward(df, c.pop("c_fc"), x=ops.layernorm.output(ln_2))
    del df
    add("mlp.c_fc", *grads)
    dln, dw, db = ops.layernorm.backward(dh, ln_2)
    add("ln_2", dw, db)
    dx_mid += dln                                                 # residual fan-in
    # x_mid = x_in + Dropout(c_proj(MHA(c_attn(LN_1(x_in)))))
    dx_in, da = ops.residual.backward(dx_mid, c.pop("res_1"))
    da = ops.dropout.backward(da, c.pop("drop_1"))
    dy, *grads = linear_backward(da, c.pop("c_proj_attn"))
    add("attn.c_proj", *grads)
    dqkv = ops.mha.backward_qkv(dy, c.pop("attn"))                # (B, T, 3C): dq, dk, dv, as c_attn made q, k, v
    del dy, da
    ln_1 = c.pop("ln_1")
    dh, *grads = linear_backward(dqkv, c.pop("c_attn"), x=ops.layernorm.output(ln_1))
    del dqkv
    add("attn.c_attn", *grads)
    dln, dw, db = ops.layernorm.backward(dh, ln_1)
    add("ln_1", dw, db)
    dx_in += dln                                                  # residual fan-in
    return dx_in


def linear_forward(ops, w, layer, x, lora, **kw):
    """The block's linear map `layer` ("attn.c_attn", ...): ops.linear, or ops.lora where lora =
    (alpha, adapters) gives the layer an adapter; with lora every base weight is frozen. Returns
    (y, (op, cache)) for linear_backward."""
    weight, bias = w[f"{layer}.weight"], w[f"{layer}.bias"]
    if lora is None:
        y, cache = ops.linear.forward(x, weight, bias, **kw)
        return y, (ops.linear, cache)
    alpha, adapters = lora
    if layer in adapters:
        A, B = adapters[layer]
        y, cache = ops.lora.forward(x, weight, bias, A, B, alpha=alpha, frozen=True, **kw)
        return y, (ops.lora, cache)
    y, cache = ops.linear.forward(x, weight, bias, frozen=True, **kw)
    return y, (ops.linear, cache)


def linear_backward(dy, tagged_cache, x=None):
    """linear_forward walked backwards: (dx, dweight, dbias) from ops.linear, and from ops.lora
    also (dA, dB)."""
    op, cache = tagged_cache
    return op.backward(dy, cache, x=x)


# ----------------------------------------------------------------------------- the model

class GPT(Decoder):
    """A GPT whose parameters are named views into one flat buffer.

    >>> model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> logits = model.forward(np.zeros((2, 8), dtype=np.int64))        # (B, T, V)
    >>> logits, loss = model.forward(idx, targets); model.backward()   # grads in model.grads
    """

    token_embedding = head_weight = GPT2.name("wte")      # tied: the LM head is the token embedding
    _WPE, _LN_F, _LN_F_BIAS = GPT2.name("wpe"), GPT2.name("ln_f"), GPT2.name("ln_f", BIAS)   # spelt once, not per token

    def __init__(self, config: GPTConfig, *, dtype=np.float32, seed: int = 0, init: bool = True,
                 ops: str = "fast", lora=None):
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.ops_name = ops
        self.ops = op_set(ops)
        self.params = FlatParams(gpt_param_shapes(config), self.dtype)
        self.lora, self.adapters = lora, None          # see "Adapters" above
        if lora is not None:
            lora.check_fits(config)
            self.adapters = FlatParams(lora_param_shapes(config, lora.rank, lora.targets), self.dtype)
            self.init_adapters(seed)
        self.trainable = self.params if lora is None else self.adapters
        self.grads = self.trainable.like()
        self.training = True
        self.rng = np.random.default_rng([seed, 1])  # dropout masks; its state is checkpointed
        C = config.n_embd
        # x0 = embed_scale · wte[idx] + pe[t] (see "Positions" above); pe (block_size, C)
        self.embed_scale, self.pe = position_terms(config, self.dtype)
        self.tokenizer = None
        self.hf_notes: list[str] = []               # from_hf: what the import changed or left out
        self.hf_tokenizer_problem: str | None = None  # from_hf: why the folder's tokenizer files cannot be used
        self._zeros_C = np.zeros(C, dtype=self.dtype)  # stands in for LayerNorm bias when bias=False
        self.quantization = "none"                  # see "Quantized weights" above (numformer.model.quantized)
        self.quantized: dict = {}                   # name -> quant.Int8Blocks or quant.BF16
        self._tape = None
        self._blocks = [self._block_params(i) for i in range(config.n_layer)]
        self._lora = [self._block_adapters(i) for i in range(config.n_layer)]
        if init:
            self.init_weights(seed)

    # ----------------------------------------------------------------------------- parameters

    def init_weights(self, seed: int = 0) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm gains; the two
        projections that write into the residual stream get std 0.02/√(2·n_layer)."""
        rng = np.random.default_rng(seed)
        resid_std = 0.02 / np.sqrt(2 * self.config.n_layer)
        for p in GPT2.params(self.config):                   # buffer order: the draws follow it
            w = self.params[p.name]
            if p.kind == NORM:
                w[...] = 1.0 if p.part == WEIGHT else 0.0
            elif p.part == BIAS:
                w[...] = 0.0
            else:
                w[...] = rng.normal(0.0, resid_std if p.residual else 0.02, size=w.shape)

    # ----------------------------------------------------------------------------- forward

    def forward_tape(self, idx, targets=None, rng=None):
        """forward(idx, targets) with dropout masks drawn from rng (default: self.rng), returning
        (forward's result, the tape) instead of keeping the tape: what backward_tape needs.
        Dropping the tape frees the activations (an evaluation needs none)."""
        idx, B, T = self.check_input(idx, targets)
        cfg, ops = self.config, self.ops
        drop = cfg.dropout if self.training else 0.0
        rng = self.rng if rng is None else rng
        tape = {"T": T, "blocks": []}

        x, tape["emb"] = self._embed(idx, 0)                                  # (B, T, C)
        x, tape["drop"] = ops.dropout.forward(x, drop, rng, training=drop > 0)
        for w, lora in zip(self._blocks, self._lora):
            x, c = block_forward(ops, w, x, cfg, drop=drop, rng=rng, lora=lora)
            tape["blocks"].append(c)
        logits, tape["ln_f"], tape["lm_head"] = self._head(x)                 # (B, T, V)
        tape["ce"] = None
        if targets is None:
            return logits, tape
        V = cfg.vocab_size
        loss, tape["ce"] = ops.cross_entropy.forward(logits.reshape(B * T, V), np.asarray(targets).reshape(B * T))
        return (logits, float(loss)), tape

    def _embed(self, idx, t0):
        """x0 = embed_scale · wte[idx] + positions t0 .. t0+T-1. Returns (x0, embedding cache)."""
        p, T = self.params, idx.shape[1]
        tok, cache = self.ops.embedding.forward(idx, self.tensor(self.token_embedding))  # (B, T, C)
        pos = (p[self._WPE] if self.config.pos_encoding == "learned" else self.pe)[t0:t0 + T]
        x = tok * self.embed_scale + pos if self.embed_scale != 1.0 else tok + pos
        return x, cache

    def _head(self, x):
        """logits = LN_f(x) · wteᵀ. Returns (logits, LN_f's cache, the head's cache)."""
        p = self.params
        x, ln_f = self.ops.layernorm.forward(x, p[self._LN_F], p.views.get(self._LN_F_BIAS, self._zeros_C),
                                             self.config.layer_norm_eps)
        logits, head = self.ops.linear.forward(x, self.tensor(self.head_weight), keep_input=False,  # tied; x from LN_f's cache
                                               frozen=self.lora is not None)
        return logits, ln_f, head

    # ----------------------------------------------------------------------------- backward

    def backward_tape(self, tape, dloss: float = 1.0, *, accumulate=None) -> None:
        """backward of the forward_tape(idx, targets) that returned `tape`; the tape is emptied.

        accumulate(name, value, index) replaces `self.grads[name][index] += value` when given
        (numformer.parallel.threads uses it to add the shards' gradients in a fixed order)."""
        if tape is None or tape.get("ce") is None:
            raise RuntimeError("backward() needs a preceding forward(idx, targets)")
        self.check_trainable()
        cfg, ops, T = self.config, self.ops, tape["T"]
        grads = self.grads.views

        def add(name, value, index=Ellipsis):
            if accumulate is None:
                grads[name][index] += value
            else:
                accumulate(name, value, index)

        frozen = self.lora is not None     # only the adapters get gradients

        def add_layer(block):
            def add_grads(layer, dweight, dbias, *dlora):
                if not frozen:
                    add(GPT2.name(layer, WEIGHT, block), dweight)
                    if cfg.bias:
                        add(GPT2.name(layer, BIAS, block), dbias)
                if dlora:
                    add(GPT2.name(layer, LORA_A, block), dlora[0])
                    add(GPT2.name(layer, LORA_B, block), dlora[1])
            return add_grads

        # each op's cache is popped as its backward runs, and each temporary is dropped once used,
        # so activations are freed as early as they can be (the memory peak is early in backward)
        dlogits = ops.cross_entropy.backward(tape.pop("ce"), dloss)
        dlogits = dlogits.reshape(-1, T, cfg.vocab_size)                       # (B, T, V)
        ln_f = tape.pop("ln_f")
        dx, dwte_head, _ = ops.linear.backward(dlogits, tape.pop("lm_head"), x=ops.layernorm.output(ln_f))
        del dlogits
        if not frozen:
            add(GPT2.name("wte"), dwte_head)                                   # tied weight: head's share, +=
        dx, dw, db = ops.layernorm.backward(dx, ln_f)
        del ln_f
        add_layer(None)("ln_f", dw, db)

        blocks = tape["blocks"]
        for i in reversed(range(cfg.n_layer)):
            dx = block_backward(ops, dx, blocks[i], cfg, add_layer(i))
            blocks[i] = None
        if frozen:
            return

        dx = ops.dropout.backward(dx, tape["drop"])
        if cfg.pos_encoding == "learned":
            add(GPT2.name("wpe"), dx.sum(axis=0), slice(0, T))
        dtok = dx * self.embed_scale if self.embed_scale != 1.0 else dx
        add(GPT2.name("wte"), ops.embedding.backward(dtok, tape["emb"]))  # tied weight: input's share, +=

    # ----------------------------------------------------------------------------- KV-cached decoding

    def new_kv_cache(self, batch_size: int) -> KVCache:
        return KVCache(self.config, batch_size, self.dtype)

    def forward_cached(self, idx, cache: KVCache) -> np.ndarray:
        """Logits (B, Tn, V) of the new tokens idx (B, Tn), which sit at positions
        cache.length .. cache.length+Tn-1. Appends their keys and values to the cache, so each new
        token costs one position's work instead of a whole forward pass. No dropout, no tape."""
        idx = np.asarray(idx)
        t0, t1 = cache.length, cache.length + idx.shape[1]
        if t1 > self.config.block_size:
            raise ValueError(f"KV cache holds {self.config.block_size} positions; {t1} requested")
        x, _ = self._embed(idx, t0)                                            # (B, Tn, C)
        for i, w in enumerate(self._blocks):
            x, _ = block_forward(self.ops, w, x, self.config, kv=(cache.k[i], cache.v[i], t0), lora=self._lora[i])
        logits, _, _ = self._head(x)
        cache.length = t1
        return logits

    # ----------------------------------------------------------------------------- files

    def save(self, path, *, tokenizer: str | None = None, optimizer: dict | None = None,
             train_state: dict | None = None) -> None:
        """Write a checkpoint folder (see numformer.model.serialize). A quantized model is not saved:
        its checkpoint is the float32 one it was loaded from."""
        self.check_savable()
        save_gpt(self, path, tokenizer=tokenizer, optimizer=optimizer, train_state=train_state)

    @classmethod
    def load(cls, path, *, dtype=None, ops: str = "fast", quantize: str = "none") -> "GPT":
        """Load a checkpoint folder written by `save` (or `numformer train`); its tokenizer, when
        it has one, is `model.tokenizer`. quantize: "none" (the default), "bf16" or "int8" stores
        the weights so for inference (`quantize`; the checkpoint must then be float32 or dtype
        float32)."""
        check_quantize(quantize)
        saved = read_gpt(path, dtype=dtype)
        model = cls(saved.config, dtype=saved.dtype, init=False, ops=ops, lora=saved.lora)
        model.load_quantized(saved.tensors, quantize, source=str(path))
        del saved.tensors
        model.tokenizer = saved.tokenizer
        return model

    @classmethod
    def from_hf(cls, path, dtype=np.float32) -> "GPT":
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors; see
        numformer.interop.gpt2). The folder's tokenizer, when it has a usable one, is
        `model.tokenizer` (else None); what the import changed or left out (dropout set to 0, a
        tokenizer not carried) is `model.hf_notes`, and why tokenizer files that are there cannot
        be used, `model.hf_tokenizer_problem` (else None)."""
        imp = read_hf_gpt2(path, dtype=dtype)
        model = cls(imp.config, dtype=dtype, init=False)
        model.load_state_dict(imp.tensors, source=str(path))
        model.tokenizer = from_json(imp.tokenizer) if imp.tokenizer != "null" else None
        model.hf_notes = imp.notes
        model.hf_tokenizer_problem = imp.tokenizer_problem
        return model

    # ----------------------------------------------------------------------------- helpers

    def _block_params(self, i: int) -> dict[str, np.ndarray]:
        """Block i's parameter views (or quantized weights) by their names inside the block
        ("ln_1.weight"); where bias=False, zeros for a LayerNorm's bias and None for a linear map's."""
        views, prefix, w = self.params.views, GPT2.prefix(i), {}
        for layer in GPT2.layers:
            for part in (WEIGHT, BIAS):
                name = GPT2.name(layer.name, part, i)
                w[name.removeprefix(prefix)] = self.quantized.get(
                    name, views.get(name, self._zeros_C if layer.kind == NORM else None))
        return w

    def _block_adapters(self, i: int):
        """Block i's adapters as (alpha, {layer: (A, B)}) for block_forward, or None."""
        if self.lora is None:
            return None
        return self.lora.alpha, {layer: (self.adapters[GPT2.name(layer, LORA_A, i)], self.adapters[GPT2.name(layer, LORA_B, i)])
                                 for layer in self.lora.targets}
