"""A decoder of Llama's shape, composed by hand from numformer's ops (Llama 2 and 3, TinyLlama,
SmolLM, Mistral without a sliding window, and Qwen2 with attention_bias).

    x0      = embed_tokens[idx]                   no position table: positions are RoPE's, in attention
    x0      = Dropout(x0)
    for each of the n_layer blocks (pre-RMSNorm):
        x   = x + Dropout(o_proj(MHA(RMSNorm_1(x))))     causal grouped-query attention, q and k
                                                          rotated by their position (RoPE)
        x   = x + Dropout(down_proj(SiLU(gate_proj(h)) ⊙ up_proj(h))),  h = RMSNorm_2(x)   SwiGLU
    logits  = RMSNorm_f(x) · W_headᵀ              W_head = lm_head.weight, or embed_tokens.weight when tied
    loss    = CrossEntropy(logits, targets)

What differs from the GPT (numformer.model.gpt), formula by formula: RMSNorm (ops.rmsnorm) where
the GPT has LayerNorm; positions by rotating q and k (ops.rope, inside ops.mha) instead of a table
added to the embedding; n_kv_head key/value heads shared by n_head / n_kv_head query heads each
(grouped-query attention, ops.mha and ops.attention); the MLP is SwiGLU (ops.swiglu between three
linear maps) instead of GELU between two; no biases (Qwen2: on q_proj, k_proj and v_proj only);
the LM head its own matrix unless tie_embeddings.

Quantized weights: `model.quantize("int8")` or "bf16" (`Llama.load(path, quantize=...)`), as the
GPT's (numformer.model.quantized): every linear map's weight, the LM head's and the token
embedding are stored so and read as stored; RMSNorm gains and biases stay float32.
`Llama.from_gguf(path, quantize="keep")` keeps a GGUF file's Q4_1 and Q8_0 weights as the file
stores them (Q4_1 blocks read in place, Q8_0 as int8 blocks of the same values), so a 98 MB file
takes about 98 MB.

`block_forward` is one block, used by training, evaluation and KV-cached decoding alike;
`block_backward` walks the same block backwards, calling each op's backward in reverse order, with
`+=` wherever gradients meet: the residuals, and the tied embedding. `Llama` has the GPT's
interface (forward / backward, forward_tape / backward_tape for the threaded step, the flat
`params`, `grads` and `trainable`, state_dict, the KV cache, generate, save / load, LoRA), so
training, sampling, evaluation and the threaded and MPI steps take either model.

Memory, as in the GPT: the two RMSNorm outputs and RMSNorm_f's are made again in backward from
their caches (rmsnorm.output), SwiGLU's output from its gate and up (swiglu.output), and
attention's probabilities from q and k (keep_probs=False). The KV cache holds the n_kv_head heads
only, keys already rotated.

Dropout is applied where the GPT applies it (embedding, attention probabilities, both residual
branches); the models of this family were trained without it, and imported ones run with 0.
Initialisation is the GPT's: N(0, 0.02), the two maps into the residual stream (o_proj, down_proj)
at 0.02/√(2·n_layer), RMSNorm gains 1, biases 0.
"""

from __future__ import annotations

import numpy as np

from numformer.errors import CheckpointError
from numformer.interop.gguf import GGUFModel, read_gguf, tensor_blocks
from numformer.model import memory
from numformer.model.config import InvalidConfig, LlamaConfig
from numformer.model.decoder import Decoder
from numformer.model.gpt import linear_backward, linear_forward
from numformer.model.params import BIAS, LLAMA, LORA_A, LORA_B, NORM, WEIGHT, FlatParams, check_tensors
from numformer.model.quantized import check_quantize
from numformer.model.serialize import read_model, save_model
from numformer.ops import op_set, quant
from numformer.ops.fast.quantized import ROWS as KERNEL_ROWS

# a quantized model's layers whose weights are stacked into one, read by one product per token
# (block_forward): q, k and v take the same input, as do gate and up
STACKED = (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
           ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")))
KEPT_BLOCKS = ("Q4_1", "Q8_0")                # the GGUF block formats that quantize="keep" leaves as they are


class KVCache:
    """Rotated keys and values of every layer for positions 0..length-1, preallocated to
    block_size: k[l] and v[l] have shape (B, n_kv_head, block_size, hs)."""

    def __init__(self, config: LlamaConfig, batch_size: int, dtype):
        shape = (batch_size, config.n_kv_head, config.block_size, config.head_size)
        self.k = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0


# ----------------------------------------------------------------------------- one block

def block_forward(ops, w, x, cfg: LlamaConfig, *, drop=0.0, rng=None, kv=None, lora=None):
    """One pre-RMSNorm block: x + Dropout(o_proj(MHA(RMSNorm_1(x)))), then x + Dropout(SwiGLU MLP).

    w: the block's parameters by short name ("self_attn.q_proj.weight", ...; a missing bias is
    None); x (B, T, C). With kv = (K, V, t0), the layer's KV cache (B, nkv, block_size, hs) and the
    position of x's first row, ops.mha rotates and writes the new keys and values into it and the
    queries attend to positions 0..t0+T-1. With lora = (alpha, {layer: (A, B)}), the base weights
    are frozen and those layers have adapters (gpt.linear_forward). Where w also has
    "self_attn.qkv_proj.weight" and "mlp.gate_up_proj.weight" (a quantized model: Llama._block_params
    stacks q, k and v's rows, and gate and up's, quant.stack_rows), those are one product each
    where x has at most KERNEL_ROWS rows (a decoding step: the row kernels compute each row as the
    layer's own weight does), the outputs their column blocks; more rows (a prompt) go to BLAS layer
    by layer as for float32 weights, the same bits as the dequantized model's products. Such a
    cache has no backward (a quantized model has none). Returns (x, cache)."""
    T = x.shape[1]
    c = {}
    stacked = x.shape[0] * T <= KERNEL_ROWS       # the row kernels' products: one call for q, k, v; one for gate, up

    def linear(layer, h, key, **kw):
        y, c[key] = linear_forward(ops, w, layer, h, lora, **kw)
        return y

    h, c["norm_1"] = ops.rmsnorm.forward(x, w["input_layernorm.weight"], cfg.rms_norm_eps)
    if stacked and "self_attn.qkv_proj.weight" in w:                     # stacked (a quantized model): one product
        qkv = linear("self_attn.qkv_proj", h, "qkv_proj", keep_input=False)
        nq, nkv = cfg.n_head * cfg.head_size, cfg.n_kv_head * cfg.head_size
        q, k, v = qkv[..., :nq], qkv[..., nq:nq + nkv], qkv[..., nq + nkv:]
    else:
        q = linear("self_attn.q_proj", h, "q_proj", keep_input=False)    # (B, T, nh·hs); h from norm_1's cache
        k = linear("self_attn.k_proj", h, "k_proj", keep_input=False)    # (B, T, nkv·hs)
        v = linear("self_attn.v_proj", h, "v_proj", keep_input=False)    # (B, T, nkv·hs)
    del h
    y, c["attn"] = ops.mha.forward(q, k, v, cfg.n_head, n_kv_head=cfg.n_kv_head, rope_theta=cfg.rope_theta,
                                   causal=T > 1, dropout_p=drop, rng=rng, kv=kv,
                                   keep_probs=False)                      # P from q, k and two numbers per row
    a = linear("self_attn.o_proj", y, "o_proj")                           # y (B, T, C): the heads concatenated
    a, c["drop_1"] = ops.dropout.forward(a, drop, rng, training=drop > 0)
    x, c["res_1"] = ops.residual.forward(x, a)
    h, c["norm_2"] = ops.rmsnorm.forward(x, w["post_attention_layernorm.weight"], cfg.rms_norm_eps)
    if stacked and "mlp.gate_up_proj.weight" in w:                       # stacked: one product
        gu = linear("mlp.gate_up_proj", h, "gate_up_proj", keep_input=False)
        g, u = gu[..., :cfg.n_hidden], gu[..., cfg.n_hidden:]
    else:
        g = linear("mlp.gate_proj", h, "gate_proj", keep_input=False)    # (B, T, H); h from norm_2's cache
        u = linear("mlp.up_proj", h, "up_proj", keep_input=False)        # (B, T, H)
    del h
    m, c["swiglu"] = ops.swiglu.forward(g, u)                             # SiLU(g) ⊙ u
    d = linear("mlp.down_proj", m, "down_proj", keep_input=False)        # (B, T, C); m is made again in backward
    del m
    d, c["drop_2"] = ops.dropout.forward(d, drop, rng, training=drop > 0)
    x, c["res_2"] = ops.residual.forward(x, d)
    return x, c


def block_backward(ops, dx, c, cfg: LlamaConfig, add):
    """block_forward walked backwards. dx: the gradient at the block's output; c: its cache, emptied
    as each op's backward uses it; add(layer, dweight, dbias) takes each layer's gradients (dbias
    None where it has no bias, both None where frozen; after them an adapted layer's dA, dB).
    Returns the gradient at the block's input."""
    # x = x_mid + Dropout(down_proj(SwiGLU(gate_proj(h), up_proj(h)))),  h = RMSNorm_2(x_mid)
    dx_mid, dd = ops.residual.backward(dx, c.pop("res_2"))
    dd = ops.dropout.backward(dd, c.pop("drop_2"))
    swiglu = c.pop("swiglu")
    dm, *grads = linear_backward(dd, c.pop("down_proj"), x=ops.swiglu.output(swiglu))   # SwiGLU's output again
    del dd
    add("mlp.down_proj", *grads)
    dg, du = ops.swiglu.backward(dm, swiglu)
    del dm, swiglu
    norm_2 = c.pop("norm_2")
    h = ops.rmsnorm.output(norm_2)                                        # RMSNorm_2's output again
    dh, *grads = linear_backward(du, c.pop("up_proj"), x=h)
    add("mlp.up_proj", *grads)
    dh_gate, *grads = linear_backward(dg, c.pop("gate_proj"), x=h)
    add("mlp.gate_proj", *grads)
    dh += dh_gate                                                         # h fans out to gate and up: +=
    del h, dg, du, dh_gate
    dln, dw = ops.rmsnorm.backward(dh, norm_2)
    add("post_attention_layernorm", dw, None)
    dx_mid += dln                                                         # residual fan-in
    # x_mid = x_in + Dropout(o_proj(MHA(q_proj(h), k_proj(h), v_proj(h)))),  h = RMSNorm_1(x_in)
    dx_in, da = ops.residual.backward(dx_mid, c.pop("res_1"))
    da = ops.dropout.backward(da, c.pop("drop_1"))
    dy, *grads = linear_backward(da, c.pop("o_proj"))
    add("self_attn.o_proj", *grads)
    dq, dk, dv = ops.mha.backward(dy, c.pop("attn"))                      # (B, T, nh·hs), (B, T, nkv·hs) twice
    del dy, da
    norm_1 = c.pop("norm_1")
    h = ops.rmsnorm.output(norm_1)                                        # RMSNorm_1's output again
    dh, *grads = linear_backward(dq, c.pop("q_proj"), x=h)
    add("self_attn.q_proj", *grads)
    for name, d in (("k_proj", dk), ("v_proj", dv)):
        dh_kv, *grads = linear_backward(d, c.pop(name), x=h)
        add(f"self_attn.{name}", *grads)
        dh += dh_kv                                                       # h fans out to q, k and v: +=
    del h, dq, dk, dv
    dln, dw = ops.rmsnorm.backward(dh, norm_1)
    add("input_layernorm", dw, None)
    dx_in += dln                                                          # residual fan-in
    return dx_in


# ----------------------------------------------------------------------------- the model

class Llama(Decoder):
    """A Llama-shaped decoder whose parameters are named views into one flat buffer, named as
    Hugging Face's LlamaForCausalLM names them (model.params.LLAMA).

    >>> model = Llama(LlamaConfig(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_kv_head=2, n_embd=16))
    >>> logits = model.forward(np.zeros((2, 8), dtype=np.int64))        # (B, T, V)
    >>> logits, loss = model.forward(idx, targets); model.backward()   # grads in model.grads
    """

    family = LLAMA
    token_embedding = LLAMA.name("model.embed_tokens")

    def __init__(self, config: LlamaConfig, *, dtype=np.float32, seed: int = 0, init: bool = True,
                 ops: str = "fast", lora=None):
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.ops_name = ops
        self.ops = op_set(ops)
        self.params = FlatParams(LLAMA.shapes(config), self.dtype)
        self.lora, self.adapters = lora, None          # see GPT, "Adapters"
        if lora is not None:
            lora.check_fits(config)
            self.adapters = FlatParams({p.name: p.shape for p in LLAMA.adapters(config, lora.rank, lora.targets)},
                                       self.dtype)
            self.init_adapters(seed)
        self.trainable = self.params if lora is None else self.adapters
        self.grads = self.trainable.like()
        self.training = True
        self.rng = np.random.default_rng([seed, 1])  # dropout masks; its state is checkpointed
        self.tokenizer = None
        self.quantization = "none"                  # see numformer.model.quantized
        self.quantized: dict = {}                   # name -> quant.Int8Blocks or quant.BF16
        self._tape = None
        self._blocks = [self._block_params(i) for i in range(config.n_layer)]
        self._lora = [self._block_adapters(i) for i in range(config.n_layer)]
        # the LM head's weight: its own, or the token embedding's (tied)
        self.head_weight = LLAMA.name("model.embed_tokens") if config.tie_embeddings else LLAMA.name("lm_head")
        if init:
            self.init_weights(seed)

    # ----------------------------------------------------------------------------- parameters

    def init_weights(self, seed: int = 0) -> None:
        """The GPT's initialisation (GPT-2's rule): N(0, 0.02) weights, zero biases, unit RMSNorm
        gains; o_proj and down_proj, which write into the residual stream, get std 0.02/√(2·n_layer)."""
        rng = np.random.default_rng(seed)
        resid_std = 0.02 / np.sqrt(2 * self.config.n_layer)
        for p in LLAMA.params(self.config):                   # buffer order: the draws follow it
            w = self.params[p.name]
            if p.kind == NORM:
                w[...] = 1.0
            elif p.part == BIAS:
                w[...] = 0.0
            else:
                w[...] = rng.normal(0.0, resid_std if p.residual else 0.02, size=w.shape)

    # ----------------------------------------------------------------------------- forward

    def forward_tape(self, idx, targets=None, rng=None):
        """forward(idx, targets) with dropout masks drawn from rng (default: self.rng), returning
        (forward's result, the tape) instead of keeping the tape: what backward_tape needs."""
        idx, B, T = self.check_input(idx, targets)
        cfg, ops = self.config, self.ops
        drop = cfg.dropout if self.training else 0.0
        rng = self.rng if rng is None else rng
        tape = {"T": T, "blocks": []}

        x, tape["emb"] = ops.embedding.forward(idx, self.tensor(self.token_embedding))   # (B, T, C)
        x, tape["drop"] = ops.dropout.forward(x, drop, rng, training=drop > 0)
        for w, lora in zip(self._blocks, self._lora):
            x, c = block_forward(ops, w, x, cfg, drop=drop, rng=rng, lora=lora)
            tape["blocks"].append(c)
        logits, tape["norm_f"], tape["lm_head"] = self._head(x)              # (B, T, V)
        tape["ce"] = None
        if targets is None:
            return logits, tape
        V = cfg.vocab_size
        loss, tape["ce"] = ops.cross_entropy.forward(logits.reshape(B * T, V), np.asarray(targets).reshape(B * T))
        return (logits, float(loss)), tape

    def _head(self, x):
        """logits = RMSNorm_f(x) · W_headᵀ. Returns (logits, RMSNorm_f's cache, the head's cache)."""
        x, norm_f = self.ops.rmsnorm.forward(x, self.params[LLAMA.name("model.norm")], self.config.rms_norm_eps)
        logits, head = self.ops.linear.forward(x, self.tensor(self.head_weight), keep_input=False,  # x from norm_f's cache
                                               frozen=self.lora is not None)
        return logits, norm_f, head

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
                    add(LLAMA.name(layer, WEIGHT, block), dweight)
                    if dbias is not None:
                        add(LLAMA.name(layer, BIAS, block), dbias)
                if dlora:
                    add(LLAMA.name(layer, LORA_A, block), dlora[0])
                    add(LLAMA.name(layer, LORA_B, block), dlora[1])
            return add_grads

        dlogits = ops.cross_entropy.backward(tape.pop("ce"), dloss)
        dlogits = dlogits.reshape(-1, T, cfg.vocab_size)                       # (B, T, V)
        norm_f = tape.pop("norm_f")
        dx, dhead, _ = ops.linear.backward(dlogits, tape.pop("lm_head"), x=ops.rmsnorm.output(norm_f))
        del dlogits
        if not frozen:
            add(self.head_weight, dhead)                                        # tied: the head's share, +=
        dx, dw = ops.rmsnorm.backward(dx, norm_f)
        del norm_f
        add_layer(None)("model.norm", dw, None)

        blocks = tape["blocks"]
        for i in reversed(range(cfg.n_layer)):
            dx = block_backward(ops, dx, blocks[i], cfg, add_layer(i))
            blocks[i] = None
        if frozen:
            return

        dx = ops.dropout.backward(dx, tape["drop"])
        add(LLAMA.name("model.embed_tokens"), ops.embedding.backward(dx, tape["emb"]))   # tied: the lookup's share, +=

    # ----------------------------------------------------------------------------- KV-cached decoding

    def new_kv_cache(self, batch_size: int) -> KVCache:
        return KVCache(self.config, batch_size, self.dtype)

    def forward_cached(self, idx, cache: KVCache) -> np.ndarray:
        """Logits (B, Tn, V) of the new tokens idx (B, Tn), which sit at positions
        cache.length .. cache.length+Tn-1. Appends their (rotated) keys and values to the cache.
        No dropout, no tape."""
        idx = np.asarray(idx)
        t0, t1 = cache.length, cache.length + idx.shape[1]
        if t1 > self.config.block_size:
            raise ValueError(f"KV cache holds {self.config.block_size} positions; {t1} requested")
        x, _ = self.ops.embedding.forward(idx, self.tensor(self.token_embedding))   # (B, Tn, C)
        for i, w in enumerate(self._blocks):
            x, _ = block_forward(self.ops, w, x, self.config, kv=(cache.k[i], cache.v[i], t0), lora=self._lora[i])
        logits, _, _ = self._head(x)
        cache.length = t1
        return logits

    # ----------------------------------------------------------------------------- files

    def save(self, path, *, tokenizer: str | None = None, optimizer: dict | None = None,
             train_state: dict | None = None) -> None:
        """Write a checkpoint folder (see numformer.model.serialize); config.json says "numformer-llama".
        A quantized model is not saved: its checkpoint is the float32 one it was loaded from."""
        self.check_savable()
        save_model(self, path, tokenizer=tokenizer, optimizer=optimizer, train_state=train_state)

    @classmethod
    def load(cls, path, *, dtype=None, ops: str = "fast", quantize: str = "none") -> "Llama":
        """Load a Llama checkpoint folder written by `save` (or `numformer train --arch llama`); its
        tokenizer, when it has one, is `model.tokenizer`. quantize: "none" (the default), "bf16" or
        "int8" stores the weights so for inference (`quantize`)."""
        check_quantize(quantize)
        saved = read_model(path, dtype=dtype, families=("llama",))
        model = cls(saved.config, dtype=saved.dtype, init=False, ops=ops, lora=saved.lora)
        model.load_quantized(saved.tensors, quantize, source=str(path))
        del saved.tensors
        model.tokenizer = saved.tokenizer
        return model

    @classmethod
    def from_gguf(cls, path, *, dtype=np.float32, ops: str = "fast", quantize: str = "none") -> "Llama":
        """Load a GGUF file (llama.cpp's format; see numformer.interop.gguf): Q and K in Hugging
        Face's row order, the tokenizer (with the chat template) as `model.tokenizer`, and the
        weights, by `quantize`: "none" dequantized to `dtype`; "int8" or "bf16" dequantized, then
        quantized so (`quantize`); "keep" the Q4_1 and Q8_0 weights as the file has them (Q8_0 as
        int8 blocks of the same values), any other type dequantized to float32. CheckpointError
        (one line naming the file) for a file numformer cannot run. `path` may also be the file
        already read (a GGUFModel)."""
        check_quantize(quantize)
        gguf = path if isinstance(path, GGUFModel) else read_gguf(path)
        path = gguf.path
        try:
            config = LlamaConfig(**gguf.config)
        except InvalidConfig as e:
            raise CheckpointError(f"{path}: {e}") from None
        model = cls(config, dtype=dtype, init=False, ops=ops)
        check_tensors(gguf.tensors, LLAMA.shapes(config), str(path))
        if quantize == "keep":
            kept = {name: _kept(gguf, name) for name in model.quantizable() if gguf.tensors[name].kind in KEPT_BLOCKS}
            memory.refuse_if_too_big("loading this model", [("weights", (memory.model_params(config) - sum(
                int(np.prod(w.shape)) for w in kept.values())) * 4)], "free some memory or use a machine with more")
            model.store_quantized(kept, gguf.float32, "keep")
        else:
            memory.refuse_if_too_big("loading this model", [("weights", memory.model_params(config) * np.dtype(dtype).itemsize)],
                                     "free some memory or use a machine with more")
            for name, view in model.params.views.items():
                view[...] = gguf.float32(name)       # one tensor at a time: no second copy of the model
        model.tokenizer = gguf.bpe_tokenizer()
        return model.quantize(quantize) if quantize in quant.FORMATS else model

    # ----------------------------------------------------------------------------- helpers

    def _block_params(self, i: int) -> dict[str, np.ndarray]:
        """Block i's parameter views (or quantized weights) by their names inside the block
        ("self_attn.q_proj.weight"); None for a bias the layer does not have."""
        views, prefix, w = self.params.views, LLAMA.prefix(i), {}
        for layer in LLAMA.layers:
            for part in (WEIGHT, BIAS):
                name = LLAMA.name(layer.name, part, i)
                w[name.removeprefix(prefix)] = self.quantized.get(name, views.get(name))
        for stacked, layers in STACKED:
            names = [LLAMA.name(layer, WEIGHT, i) for layer in layers]
            if all(n in self.quantized for n in names) and all(w[f"{layer}.bias"] is None for layer in layers):
                got = quant.stack_rows([self.quantized[n] for n in names])
                if got is not None:              # the layers' weights become views of the stacked one
                    for n, layer, view in zip(names, layers, got[1]):
                        self.quantized[n] = w[f"{layer}.weight"] = view
                    w[f"{stacked}.weight"], w[f"{stacked}.bias"] = got[0], None
        return w

    def _block_adapters(self, i: int):
        """Block i's adapters as (alpha, {layer: (A, B)}) for block_forward, or None."""
        if self.lora is None:
            return None
        layers = [LLAMA.lora_targets[t] for t in self.lora.targets]
        return self.lora.alpha, {layer: (self.adapters[LLAMA.name(layer, LORA_A, i)],
                                         self.adapters[LLAMA.name(layer, LORA_B, i)]) for layer in layers}


def _kept(gguf: GGUFModel, name: str):
    """GGUF tensor `name` (Q4_1 or Q8_0) as a quantized weight of the same values, unpermuted;
    CheckpointError if a block's scale (or minimum) is not finite."""
    t = gguf.tensors[name]
    raw = tensor_blocks(t)
    w = quant.Q41Blocks(raw) if t.kind == "Q4_1" else quant.q8_0_as_int8(raw)
    size = 20 if t.kind == "Q4_1" else 34
    scales = np.ascontiguousarray(raw.reshape(raw.shape[0], -1, size)[..., :4 if t.kind == "Q4_1" else 2])
    if not np.isfinite(scales.view(np.float16)).all():
        raise CheckpointError(f"{gguf.path}: tensor {t.gguf_name} has blocks whose scale is not finite")
    return w
