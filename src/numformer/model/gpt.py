"""A decoder-only GPT composed by hand from numformer's ops.

    x0      = wte[idx] + P                        token embedding + positions (see "Positions" below)
    x0      = Dropout(x0)
    for each of the n_layer blocks (pre-LayerNorm):
        x   = x + Dropout(MHA(LN_1(x)))           causal multi-head self-attention
        x   = x + Dropout(W_2 · GELU(W_1 · LN_2(x)))   the MLP, C -> 4C -> C
    logits  = LN_f(x) · wteᵀ                      the LM head is tied to the token embedding
    loss    = CrossEntropy(logits, targets)

`forward` runs the ops in that order and keeps each op's cache; `backward` walks the same list
backwards, calling each op's backward, and adds into the flat gradient buffer. Four activations
per block are not kept, because they can be made again at backward time, bit for bit as forward
made them: GELU's output, the input of the MLP's second linear map (B·T·4C values), from GELU's
input in the same pass that computes GELU's derivative (gelu.output_and_slope); the two
LayerNorm outputs, the inputs of c_attn and c_fc, from LayerNorm's cache (layernorm.output), as
is the final LayerNorm's output for the LM head; and attention's probabilities, from q, k and
two numbers per query row (attention.forward with keep_probs=False, one more q kᵀ product in
backward). Together that is almost half of what a block would otherwise store (the small config
at B = 8: 25.5 of 55.5 MiB a block).
Gradients meet in two places, and both are written as `+=`: at every residual (the skip path and
the branch) and at the tied embedding (the LM head and the input lookup).

Positions. `pos_encoding="learned"` adds a trained table `wpe` as GPT-2 does. The default,
`"sinusoidal"`, adds the fixed table P of the seed's formula 2, scaled by 1/√C. A straight
reading of the seed adds P as it is, and trains much worse (val loss 2.31 against 1.88 for
learned positions on the built-in corpus): token embeddings initialised at N(0, 0.02) are about
35× smaller than P's entries (RMS 1/√2), so the first LayerNorm sees mostly position and little
token identity, and the residual stream is ~35× larger than GPT-2's, so the blocks' small initial
outputs barely move it. The seed leaves out the detail of the original Transformer paper
(Vaswani et al. 2017, §3.4) that fixes the first problem: the embedding is multiplied by √d_model
before P is added. numformer keeps that ratio, token : position = √C : 1, but divides both by
√C so the residual stream stays at GPT-2's scale: x0 = wte[idx] + P/√C. Measured over 2000 steps
of the default run: learned 1.8828, P/√C 1.8675, √C·wte + P 1.9225, the seed's wte + P 2.3094
(`benchmarks/train_compare.py --pos_encoding all`; the README has the table).
`embed_scale` (1 by default) multiplies wte[idx]; the benchmark uses it for the paper's form.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from numformer.errors import CheckpointError
from numformer.model.config import GPTConfig
from numformer.model.params import FlatParams, gpt_param_shapes
from numformer.ops import attention, cross_entropy, dropout, embedding, gelu, layernorm, linear, mha
from numformer.ops import positional, residual

FORMAT = "numformer-gpt"


class KVCache:
    """Keys and values of every layer for positions 0..length-1, preallocated to block_size.

    k[l] and v[l] have shape (B, nh, block_size, hs).
    """

    def __init__(self, config: GPTConfig, batch_size: int, dtype):
        shape = (batch_size, config.n_head, config.block_size, config.head_size)
        self.k = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0


class GPT:
    """A GPT whose parameters are named views into one flat buffer.

    >>> model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> logits = model.forward(np.zeros((2, 8), dtype=np.int64))        # (B, T, V)
    >>> logits, loss = model.forward(idx, targets); model.backward()   # grads in model.grads
    """

    def __init__(self, config: GPTConfig, *, dtype=np.float32, seed: int = 0, init: bool = True):
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params = FlatParams(gpt_param_shapes(config), self.dtype)
        self.grads = self.params.like()
        self.training = True
        self.rng = np.random.default_rng([seed, 1])  # dropout masks; its state is checkpointed
        C = config.n_embd
        self.embed_scale = 1.0           # multiplies wte[idx]; see "Positions" above
        # the seed's sin/cos table P, scaled by 1/√C (see "Positions" above)      # (block_size, C)
        self.pe = (positional.sinusoidal(config.block_size, C) / math.sqrt(C)).astype(self.dtype)
        self._zeros_C = np.zeros(C, dtype=self.dtype)  # stands in for LayerNorm bias when bias=False
        self._tape = None
        self._adds, self._shard = None, 0   # set on the replicas of a threaded step (loss_and_grad)
        self._blocks = [self._collect_block_params(i) for i in range(config.n_layer)]
        if init:
            self.init_weights(seed)

    # ----------------------------------------------------------------------------- parameters

    def init_weights(self, seed: int = 0) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm gains; the two
        projections that write into the residual stream get std 0.02/√(2·n_layer)."""
        rng = np.random.default_rng(seed)
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, w in self.params.items():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                w[...] = 1.0 if name.endswith(".weight") else 0.0
            elif name.endswith(".bias"):
                w[...] = 0.0
            else:
                std = resid_std if name.endswith("c_proj.weight") else 0.02
                w[...] = rng.normal(0.0, std, size=w.shape)

    def decay_mask(self) -> np.ndarray:
        """Flat mask of the parameters that get weight decay: those with two or more dimensions
        (matmul weights and embeddings), not biases or LayerNorm gains."""
        return self.params.mask(lambda name, shape: len(shape) >= 2)

    def num_params(self) -> int:
        return self.params.size

    def zero_grad(self) -> None:
        self.grads.flat[...] = 0

    def train(self) -> "GPT":
        self.training = True
        return self

    def eval(self) -> "GPT":
        self.training = False
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.params.views)

    def load_state_dict(self, tensors: dict[str, np.ndarray], source: str = "state dict") -> None:
        """Copy tensors into the flat buffer, checking that every name and shape matches."""
        expected = self.params.shapes
        missing = [n for n in expected if n not in tensors]
        if missing:
            raise CheckpointError(f"{source}: missing tensor {missing[0]}"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        unexpected = [n for n in tensors if n not in expected]
        if unexpected:
            raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]} for this config")
        for name, shape in expected.items():
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise CheckpointError(f"{source}: tensor {name} has shape {tuple(t.shape)}, "
                                      f"the config needs {shape}")
            self.params.views[name][...] = t

    # ----------------------------------------------------------------------------- forward

    def forward(self, idx, targets=None):
        """Logits (B, T, V) for token ids idx (B, T); with targets (B, T), also the mean
        cross-entropy loss (targets of -1 are ignored). Keeps what `backward` needs."""
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"idx must have shape (B, T), got {idx.shape}")
        B, T = idx.shape
        cfg, p = self.config, self.params
        if T > cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {cfg.block_size}")
        drop = cfg.dropout if self.training else 0.0
        eps = cfg.layer_norm_eps
        tape = {"B": B, "T": T, "blocks": []}

        tok, tape["emb"] = embedding.forward(idx, p["transformer.wte.weight"])   # (B, T, C)
        pos = p["transformer.wpe.weight"][:T] if cfg.pos_encoding == "learned" else self.pe[:T]
        x = tok * self.embed_scale + pos if self.embed_scale != 1.0 else tok + pos   # (B, T, C)
        x, tape["drop"] = dropout.forward(x, drop, self.rng, training=drop > 0)

        for i in range(cfg.n_layer):
            w = self._block_params(i)
            c = {}
            h, c["ln_1"] = layernorm.forward(x, w["ln_1.weight"], w["ln_1.bias"], eps)
            a, c["attn"] = mha.forward(h, w["attn.c_attn.weight"], w["attn.c_attn.bias"],
                                       w["attn.c_proj.weight"], w["attn.c_proj.bias"], cfg.n_head,
                                       causal=True, dropout_p=drop, rng=self.rng,
                                       keep_input=False,    # h is recomputed from LN_1's cache,
                                       keep_probs=False)    # P from q, k and two numbers per row
            a, c["drop_1"] = dropout.forward(a, drop, self.rng, training=drop > 0)
            x, c["res_1"] = residual.forward(x, a)
            h, c["ln_2"] = layernorm.forward(x, w["ln_2.weight"], w["ln_2.bias"], eps)
            f, c["c_fc"] = linear.forward(h, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"],
                                          keep_input=False)  # (B, T, 4C); h is recomputed from LN_2's cache
            g, c["gelu"] = gelu.forward(f, approximate=_gelu_mode(cfg))
            m, c["c_proj"] = linear.forward(g, w["mlp.c_proj.weight"], w["mlp.c_proj.bias"],
                                            keep_input=False)   # (B, T, C); g is recomputed in backward
            del g                                                # so it is not kept past this line
            m, c["drop_2"] = dropout.forward(m, drop, self.rng, training=drop > 0)
            x, c["res_2"] = residual.forward(x, m)
            tape["blocks"].append(c)

        x, tape["ln_f"] = layernorm.forward(x, p["transformer.ln_f.weight"], self._ln_bias("transformer.ln_f"), eps)
        logits, tape["lm_head"] = linear.forward(x, p["transformer.wte.weight"],
                                                 keep_input=False)   # (B, T, V), tied; x from LN_f's cache
        self._tape = tape
        if targets is None:
            tape["ce"] = None
            return logits
        targets = np.asarray(targets)
        if targets.shape != (B, T):
            raise ValueError(f"targets shape {targets.shape} does not match idx shape {idx.shape}")
        V = cfg.vocab_size
        loss, tape["ce"] = cross_entropy.forward(logits.reshape(B * T, V), targets.reshape(B * T))
        return logits, float(loss)

    # ----------------------------------------------------------------------------- backward

    def backward(self, dloss: float = 1.0) -> None:
        """Add d(loss)/d(parameter) of the last forward(idx, targets) into self.grads. The
        activations are released as they are used, so a second backward needs a new forward."""
        tape = self._tape
        if tape is None or tape.get("ce") is None:
            raise RuntimeError("backward() needs a preceding forward(idx, targets)")
        cfg = self.config
        B, T = tape["B"], tape["T"]

        # each op's cache is popped as its backward runs, and each temporary is dropped once used,
        # so activations are freed as early as they can be (the memory peak is early in backward)
        dlogits = cross_entropy.backward(tape.pop("ce"), dloss).reshape(B, T, cfg.vocab_size)
        ln_f = tape.pop("ln_f")
        dx, dwte_head, _ = linear.backward(dlogits, tape.pop("lm_head"), x=layernorm.output(ln_f))
        del dlogits
        self._add("transformer.wte.weight", dwte_head)             # tied weight: head's share, +=
        dx, dw, db = layernorm.backward(dx, ln_f)
        del ln_f
        self._acc("transformer.ln_f", dw, db)

        blocks = tape["blocks"]
        for i in reversed(range(cfg.n_layer)):
            c, h = blocks[i], f"transformer.h.{i}"
            blocks[i] = None
            # x = x_mid + Dropout(MLP(LN_2(x_mid)))
            dx_mid, dm = residual.backward(dx, c.pop("res_2"))
            dm = dropout.backward(dm, c.pop("drop_2"))
            g_out, slope = gelu.output_and_slope(c.pop("gelu"))       # GELU's output again, and its slope
            dgl, dw, db = linear.backward(dm, c.pop("c_proj"), x=g_out)
            del g_out, dm
            self._acc(f"{h}.mlp.c_proj", dw, db)
            df = np.multiply(dgl, slope, out=slope)                    # gelu backward: dy ⊙ GELU'(f)
            del dgl, slope
            ln_2 = c.pop("ln_2")
            dhid, dw, db = linear.backward(df, c.pop("c_fc"), x=layernorm.output(ln_2))
            del df
            self._acc(f"{h}.mlp.c_fc", dw, db)
            dln, dw, db = layernorm.backward(dhid, ln_2)
            self._acc(f"{h}.ln_2", dw, db)
            dx_mid += dln                                              # residual fan-in
            # x_mid = x_in + Dropout(MHA(LN_1(x_in)))
            dx_in, da = residual.backward(dx_mid, c.pop("res_1"))
            da = dropout.backward(da, c.pop("drop_1"))
            ln_1 = c.pop("ln_1")
            dhid, dwqkv, dbqkv, dwo, dbo = mha.backward(da, c.pop("attn"), x=layernorm.output(ln_1))
            self._acc(f"{h}.attn.c_attn", dwqkv, dbqkv)
            self._acc(f"{h}.attn.c_proj", dwo, dbo)
            dln, dw, db = layernorm.backward(dhid, ln_1)
            self._acc(f"{h}.ln_1", dw, db)
            dx_in += dln                                               # residual fan-in
            dx = dx_in
            del c, ln_1, ln_2, dx_mid, dx_in, da, dhid, dln, dw, db, dwqkv, dbqkv, dwo, dbo

        dx = dropout.backward(dx, tape["drop"])
        if cfg.pos_encoding == "learned":
            self._add("transformer.wpe.weight", dx.sum(axis=0), slice(0, T))
        dtok = dx * self.embed_scale if self.embed_scale != 1.0 else dx
        self._add("transformer.wte.weight", embedding.backward(dtok, tape["emb"]))  # tied weight: input's share, +=
        self._tape = None                # like PyTorch, the graph is freed by backward

    # ----------------------------------------------------------------------------- threaded training step

    def loss_and_grad(self, idx, targets, *, dloss: float = 1.0, threads: int = 1, backward: bool = True) -> float:
        """Mean loss of forward(idx, targets); its gradient (times dloss) is added into self.grads.

        With threads > 1 the batch's rows are split into that many shards, and each shard runs
        forward and backward in its own Python thread on a replica that shares this model's
        parameter buffer and has its own tape. NumPy releases the GIL inside its loops and BLAS
        calls, so the elementwise work, single-threaded in NumPy, runs on every core; OpenBLAS is
        held to one thread meanwhile. Every shard adds its gradient straight into self.grads, with
        the adds to each parameter made in shard order (_ShardAdds), so no thread needs a
        gradient buffer of its own. Each shard's gradient is weighted by its share of the
        counted targets, so the result is deterministic and equals the one-thread result up to
        float rounding. Dropout
        masks then come from per-shard generators seeded from self.rng, so its state still decides
        them. Every shard's forward runs before any backward, so input that the forward rejects
        (an id outside the vocabulary, say) raises before self.grads is touched.
        """
        idx, targets = np.asarray(idx), np.asarray(targets)
        B = idx.shape[0]
        n = max(1, min(int(threads), B))
        if n == 1:
            _, loss = self.forward(idx, targets)
            if backward:
                self.backward(dloss)
            else:
                self._tape = None
            return loss
        from numformer.runtime import blas_threads, parallel

        self._tape = None                # this model's own tape is not the one being differentiated
        replicas = self._replicas(n)
        bounds = [(B * r // n, B * (r + 1) // n) for r in range(n)]
        # each shard's loss is a mean over its own counted targets (-1 is ignored), so the shards
        # are weighted by their share of the counted targets
        counted = [int(np.count_nonzero(targets[lo:hi] != -1)) for lo, hi in bounds]
        total = max(sum(counted), 1)
        shares = [c / total for c in counted]
        seeds = self.rng.integers(0, 2**63, size=n) if self.config.dropout > 0 and self.training else [0] * n

        def shard_forward(r):
            rep, (lo, hi) = replicas[r], bounds[r]
            rep.training = self.training
            rep.rng = np.random.default_rng(int(seeds[r]))
            _, loss = rep.forward(idx[lo:hi], targets[lo:hi])
            return loss * shares[r]

        adds = _ShardAdds(self.grads.views, n)

        def shard_backward(r):
            rep = replicas[r]
            rep._adds, rep._shard = adds, r
            try:
                rep.backward(dloss * shares[r])
                adds.finish(r)                  # the adds still waiting for an earlier shard's
            except BaseException:
                adds.fail()                     # wake the others, who would wait forever
                raise
            finally:
                rep._adds = None

        # every forward first: bad ids or targets raise there, before any gradient is touched
        with blas_threads(1):
            try:
                losses = parallel(shard_forward, list(range(n)))
                if backward:
                    parallel(shard_backward, list(range(n)))
            finally:
                for rep in replicas:
                    rep._tape = None
        return float(sum(losses))

    def loss(self, idx, targets, *, threads: int = 1) -> float:
        """Mean loss of forward(idx, targets) without a gradient (evaluation), with the batch
        split over `threads` threads as in loss_and_grad."""
        return self.loss_and_grad(idx, targets, threads=threads, backward=False)

    def _replicas(self, n: int) -> list["GPT"]:
        """n models that share self's parameters and gradients (views of the same flat buffers)
        and settings, each with its own tape and dropout generator. Everything is taken from self
        on every call, so that a change to self (embed_scale, pe, grads, ...) reaches the
        replicas."""
        own = ("_tape", "rng", "_replica_list", "_adds", "_shard")
        reps = getattr(self, "_replica_list", [])
        while len(reps) < n:
            reps.append(GPT.__new__(GPT))
        self._replica_list = reps
        for rep in reps[:n]:
            rep.__dict__.update({k: v for k, v in self.__dict__.items() if k not in own})
            rep._tape, rep._adds, rep._shard = None, None, 0
        return reps[:n]

    # ----------------------------------------------------------------------------- inference with a KV cache

    def new_kv_cache(self, batch_size: int) -> KVCache:
        return KVCache(self.config, batch_size, self.dtype)

    def forward_cached(self, idx, cache: KVCache) -> np.ndarray:
        """Logits (B, Tn, V) of the new tokens idx (B, Tn), which sit at positions
        cache.length .. cache.length+Tn-1. Appends their keys and values to the cache, so each new
        token costs one position's work instead of a whole forward pass. No dropout, no tape."""
        idx = np.asarray(idx)
        B, Tn = idx.shape
        cfg, p = self.config, self.params
        t0, t1 = cache.length, cache.length + Tn
        if t1 > cfg.block_size:
            raise ValueError(f"KV cache holds {cfg.block_size} positions; {t1} requested")
        nh, hs, C, eps = cfg.n_head, cfg.head_size, cfg.n_embd, cfg.layer_norm_eps

        tok, _ = embedding.forward(idx, p["transformer.wte.weight"])
        pos = p["transformer.wpe.weight"][t0:t1] if cfg.pos_encoding == "learned" else self.pe[t0:t1]
        x = tok * self.embed_scale + pos if self.embed_scale != 1.0 else tok + pos   # (B, Tn, C)
        for i in range(cfg.n_layer):
            w = self._block_params(i)
            h, _ = layernorm.forward(x, w["ln_1.weight"], w["ln_1.bias"], eps)
            qkv, _ = linear.forward(h, w["attn.c_attn.weight"], w["attn.c_attn.bias"])    # (B, Tn, 3C)
            q, k, v = qkv.reshape(B, Tn, 3, nh, hs).transpose(2, 0, 3, 1, 4)   # each (B, nh, Tn, hs), as in mha
            cache.k[i][:, :, t0:t1] = k
            cache.v[i][:, :, t0:t1] = v
            # one new token sits at the last position and may see every cached key: no mask
            y, _ = attention.forward(q, cache.k[i][:, :, :t1], cache.v[i][:, :, :t1], causal=Tn > 1,
                                     keep_probs=False)
            y = y.transpose(0, 2, 1, 3).reshape(B, Tn, C)                              # (B, Tn, C)
            a, _ = linear.forward(y, w["attn.c_proj.weight"], w["attn.c_proj.bias"])
            x = x + a
            h, _ = layernorm.forward(x, w["ln_2.weight"], w["ln_2.bias"], eps)
            f, _ = linear.forward(h, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"])
            gl, _ = gelu.forward(f, approximate=_gelu_mode(cfg))
            m, _ = linear.forward(gl, w["mlp.c_proj.weight"], w["mlp.c_proj.bias"])
            x = x + m
        x, _ = layernorm.forward(x, p["transformer.ln_f.weight"], self._ln_bias("transformer.ln_f"), eps)
        logits, _ = linear.forward(x, p["transformer.wte.weight"])
        cache.length = t1
        return logits

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, rng=None, use_cache: bool = True):
        """Extend idx (B, T) by max_new_tokens sampled tokens; returns (B, T + max_new_tokens).
        temperature 0 is greedy. See numformer.generate for the sampling rules."""
        from numformer.generate import generate_tokens

        idx = np.asarray(idx, dtype=np.int64)
        new = list(generate_tokens(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, rng=rng, use_cache=use_cache))
        if not new:
            return idx
        return np.concatenate([idx, np.stack(new, axis=1)], axis=1)

    # ----------------------------------------------------------------------------- save / load

    def save(self, path, *, tokenizer: str | None = None, optimizer: dict | None = None,
             train_state: dict | None = None) -> None:
        """Write a checkpoint folder (see numformer.checkpoint): weights, config, tokenizer and,
        when given, optimizer moments and training state."""
        from numformer.checkpoint import save_checkpoint

        config = {"format": FORMAT, "model": self.config.to_dict(), "dtype": self.dtype.name}
        if train_state is not None:
            config["train"] = train_state
        save_checkpoint(path, model=self.state_dict(), config=config,
                        tokenizer=tokenizer if tokenizer is not None else "null", optimizer=optimizer)

    @classmethod
    def load(cls, path, *, dtype=None) -> "GPT":
        """Load a checkpoint folder written by `save` (or `numformer train`). The tokenizer, when
        the checkpoint has one, is attached as `model.tokenizer`."""
        from numformer.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        model = cls.from_checkpoint(ckpt, source=str(path), dtype=dtype)
        return model

    @classmethod
    def from_hf(cls, path, dtype=np.float32) -> "GPT":
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors); see numformer.interop.gpt2."""
        from numformer.interop.gpt2 import load_hf_gpt2

        return load_hf_gpt2(path, dtype=dtype)

    @classmethod
    def from_checkpoint(cls, ckpt, source: str, dtype=None) -> "GPT":
        cfg = ckpt.config
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or not isinstance(cfg.get("model"), dict):
            raise CheckpointError(f"{source}: config.json is not a numformer GPT checkpoint "
                                  f"(expected \"format\": \"{FORMAT}\" and a \"model\" section)")
        try:
            config = GPTConfig.from_dict(cfg["model"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: bad model config in config.json: {e}") from None
        dtype = dtype or cfg.get("dtype", "float32")
        if dtype not in ("float32", "float64", np.float32, np.float64):
            raise CheckpointError(f"{source}: config.json gives dtype {dtype!r}; numformer models are "
                                  f"float32 or float64")
        model = cls(config, dtype=dtype, init=False)
        model.load_state_dict(ckpt.model, source=source)
        model.tokenizer = None
        if ckpt.tokenizer and ckpt.tokenizer.strip() != "null":
            from numformer.data.tokenizer import from_json

            model.tokenizer = from_json(ckpt.tokenizer)
        return model

    # ----------------------------------------------------------------------------- helpers

    def _block_params(self, i: int) -> dict[str, np.ndarray]:
        return self._blocks[i]

    def _collect_block_params(self, i: int) -> dict[str, np.ndarray]:
        """Block i's parameter views by short name ("ln_1.weight"); None / zeros where bias=False."""
        prefix = f"transformer.h.{i}."
        views = self.params.views
        w = {name[len(prefix):]: arr for name, arr in views.items() if name.startswith(prefix)}
        if not self.config.bias:
            for key in ("ln_1.bias", "ln_2.bias"):
                w[key] = self._zeros_C
            for key in ("attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias"):
                w[key] = None
        return w

    def _ln_bias(self, name: str):
        return self.params.views.get(f"{name}.bias", self._zeros_C)

    def _acc(self, name: str, dweight, dbias) -> None:
        """Add a layer's gradients into the flat buffer (bias gradients only where biases exist)."""
        self._add(f"{name}.weight", dweight)
        if self.config.bias:
            self._add(f"{name}.bias", dbias)

    def _add(self, name: str, value, index=Ellipsis) -> None:
        """grads[name][index] += value: straight away, or, for a shard of a threaded step, in
        shard order (see _ShardAdds)."""
        if self._adds is None:
            self.grads.views[name][index] += value
        else:
            self._adds.add(self._shard, name, value, index)


class _ShardAdds:
    """The gradient adds of n shards of a threaded step into one shared buffer, each parameter's
    adds made in shard order: 0, 1, ..., n−1, and again for a parameter a shard adds to twice
    (the tied embedding: the LM head's share, later the lookup's). The sum is then the same,
    bit for bit, however the threads are scheduled, and no thread needs a gradient buffer of its
    own (which would cost one copy of the parameters per extra thread).

    A shard's k-th add to a parameter has the slot k·n + r in that parameter's order. A shard
    queues its adds and makes each as soon as its slot comes up, without waiting; whatever is
    left is made by finish(r) at the end of its backward, which waits. Waiting cannot deadlock:
    an add waits only for the parameter's previous slot, and slot 0 never waits."""

    def __init__(self, views, n: int):
        self.views, self.n = views, n
        self.done = {}                             # name -> slots added so far
        self.issued = [dict() for _ in range(n)]   # per shard: name -> adds queued so far
        self.pending = [[] for _ in range(n)]      # per shard: (name, slot, value, index)
        self.cv = threading.Condition()
        self.failed = False

    def add(self, r: int, name: str, value, index) -> None:
        k = self.issued[r].get(name, 0)
        self.issued[r][name] = k + 1
        self.pending[r].append((name, k * self.n + r, value, index))
        self._drain(r, wait=False)

    def finish(self, r: int) -> None:
        self._drain(r, wait=True)

    def fail(self) -> None:
        with self.cv:
            self.failed = True
            self.cv.notify_all()

    def _drain(self, r: int, wait: bool) -> None:
        queue = self.pending[r]
        while queue:
            with self.cv:
                if self.failed:
                    raise RuntimeError("another shard of the threaded step failed")
                ready = [item for item in queue if self.done.get(item[0], 0) == item[1]]
                if not ready:
                    if not wait:
                        return
                    self.cv.wait()
                    continue
            for item in ready:     # this slot is ours alone until done[name] moves on
                name, slot, value, index = item
                self.views[name][index] += value
                with self.cv:
                    self.done[name] = slot + 1
                    self.cv.notify_all()
            queue[:] = [item for item in queue if not any(item is x for x in ready)]


def _gelu_mode(cfg: GPTConfig) -> str:
    return "tanh" if cfg.gelu == "tanh" else "none"
