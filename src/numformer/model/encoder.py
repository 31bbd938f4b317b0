"""A BERT-style encoder, forward only, built from numformer.ops; numformer.interop.bert loads it
from Hugging Face BERT weights.

The embeddings of a token at position t with segment s:

    x_t = LayerNorm(E_word[id_t] + E_pos[t] + E_type[s])             # (B, T, C)

then L post-LayerNorm blocks (BERT puts LayerNorm after each residual sum; GPT-2 puts it before):

    a = LayerNorm(x + MultiHead(x, padding mask))                     # attention.output.LayerNorm
    y = LayerNorm(a + W_2 GELU(W_1 a + b_1) + b_2)                    # output.LayerNorm

Attention is bidirectional: every token may attend to every real token of its own text, never to
padding. GELU is the exact erf form (`hidden_act: "gelu"`), and eps comes from config.json's
`layer_norm_eps` (1e-12 for BERT, not PyTorch's default 1e-5).

Parameters keep Hugging Face's names (`encoder.layer.0.attention.self.query.weight`, ...; the
table is numformer.model.params.BERT), so a reader can hold this file next to `modeling_bert.py`. The three separate query/key/value linears
are stacked once at load time into one fused (3C, C) `w_qkv`: the same matrix product, done as one.

Packed rows. Every step but attention works on each token alone (the linear maps, LayerNorm,
GELU, the residual sums), so the blocks run on the tokens as rows of an (N, C) array. `forward`
takes every position of a padded (B, T) batch as a row, padding included, as Hugging Face does;
`forward_packed` takes only the N real tokens of B texts, one text after another, so padding
costs nothing there. Attention alone lays the rows out as (B, T) again, with zero rows at the
padding and the key mask keeping every query to the real keys of its own text:

    [q | k | v] = x W_qkvᵀ + b_qkv                       (N, 3C)
    grid[b, t] = [q | k | v] of text b's token t          (B, T, 3C), zeros at padding
    heads = mha(q, k, v, key mask)                        (B, T, C), the heads concatenated
    MultiHead(x) = (heads at the rows' places) W_oᵀ + b_o (N, C)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numformer.model.params import BERT, BERT_QKV, BIAS, WEIGHT
from numformer.errors import CheckpointError
from numformer.ops.fast import embedding, gelu, layernorm, linear, mha, residual   # inference: the fast set

# The feed-forward W_2 GELU(W_1 a + b_1) + b_2 works on each row alone, so a batch goes through it
# this many rows at a time: its (rows, F) activations stay a few MiB however long the batch is.
FFN_ROWS = 1024


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 384            # C
    num_hidden_layers: int = 6        # L
    num_attention_heads: int = 12     # nh
    intermediate_size: int = 1536     # 4C in BERT-base; the feed-forward width
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    gelu: str = "exact"               # "exact" = erf (BERT), "tanh" = GPT-2's approximation

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


class Encoder:
    """A BERT encoder: `forward(ids, attention_mask)` -> last hidden states (B, T, C)."""

    def __init__(self, config: EncoderConfig, params: dict[str, np.ndarray], dtype=np.float32):
        self.config = config
        self.dtype = np.dtype(dtype)
        expected = BERT.shapes(config)
        check_tensors(params, expected, source="params")
        self.params = {name: np.ascontiguousarray(params[name], dtype=self.dtype) for name in expected}
        # Fused attention input projection per layer, rows [q; k; v].
        self._qkv = []
        for l in range(config.num_hidden_layers):
            w_qkv = np.concatenate([self.params[BERT.name(n, WEIGHT, l)] for n in BERT_QKV])  # (3C, C)
            b_qkv = np.concatenate([self.params[BERT.name(n, BIAS, l)] for n in BERT_QKV])    # (3C,)
            self._qkv.append((w_qkv, b_qkv))

    def forward(self, ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """ids (B, T) int; attention_mask (B, T), 1/True for real tokens; -> hidden states (B, T, C)
        at every position, padding included (Hugging Face's numbers there too)."""
        cfg = self.config
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape (B, T), got {ids.shape}")
        B, T = ids.shape
        if T > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        keep = np.ones((B, T), dtype=bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
        if keep.shape != (B, T):
            raise ValueError(f"attention_mask shape {keep.shape} does not match ids shape {ids.shape}")
        types = np.zeros((B, T), dtype=np.int64) if token_type_ids is None else np.asarray(token_type_ids)
        positions = np.broadcast_to(np.arange(T), (B, T))
        layout = _Layout(B, T, rows=None, key_mask=None if keep.all() else keep[:, None, None, :])
        x = self._rows(ids.reshape(-1), positions.reshape(-1), types.reshape(-1), layout)          # (B·T, C)
        return x.reshape(B, T, cfg.hidden_size)

    def forward_packed(self, ids, lengths, token_type_ids=None) -> np.ndarray:
        """The real tokens of B texts only: ids (N,) holds text 0's tokens, then text 1's, ...,
        lengths (B,) how many each has (N = Σ lengths); -> hidden states (N, C), the numbers
        `forward` gives at those positions (up to float rounding)."""
        cfg = self.config
        ids = np.asarray(ids)
        lengths = np.asarray(lengths, dtype=np.int64)
        if ids.ndim != 1 or lengths.ndim != 1 or lengths.sum() != ids.size or (lengths < 1).any():
            raise ValueError(f"forward_packed: ids {ids.shape} must hold Σ lengths tokens, lengths {lengths.shape} "
                             "a positive count per text")
        B, T = lengths.size, int(lengths.max())
        if T > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        types = np.zeros(ids.size, dtype=np.int64) if token_type_ids is None else np.asarray(token_type_ids)
        grid = np.arange(T) < lengths[:, None]                        # (B, T) True at real tokens
        positions = np.broadcast_to(np.arange(T), (B, T))[grid]       # (N,) each token's place in its text
        if grid.all():                                                # texts of one length: no padding at all
            layout = _Layout(B, T, rows=None, key_mask=None)
        else:
            layout = _Layout(B, T, rows=np.flatnonzero(grid), key_mask=grid[:, None, None, :])
        return self._rows(ids, positions, types, layout)

    def _rows(self, ids, positions, types, layout) -> np.ndarray:
        """The embeddings and every block, on tokens as rows: ids, positions, types (N,) -> (N, C)."""
        cfg, P = self.config, self.params
        word, _ = embedding.forward(ids, P[BERT.name("embeddings.word_embeddings")])                   # (N, C)
        pos, _ = embedding.forward(positions, P[BERT.name("embeddings.position_embeddings")])          # (N, C)
        seg, _ = embedding.forward(types, P[BERT.name("embeddings.token_type_embeddings")])            # (N, C)
        x, _ = layernorm.forward(word + pos + seg, P[BERT.name("embeddings.LayerNorm", WEIGHT)],
                                 P[BERT.name("embeddings.LayerNorm", BIAS)], eps=cfg.layer_norm_eps)
        for l in range(cfg.num_hidden_layers):
            x = self._block(x, l, layout)
        return x

    def _block(self, x: np.ndarray, l: int, layout: "_Layout") -> np.ndarray:
        """One post-LayerNorm block on rows x (N, C). Each op's cache is dropped at once ([0]):
        the encoder never runs backward."""
        cfg, P = self.config, self.params
        eps = cfg.layer_norm_eps

        def w(layer):                                   # this block's weight and bias of `layer`
            return P[BERT.name(layer, WEIGHT, l)], P[BERT.name(layer, BIAS, l)]

        C, nh = cfg.hidden_size, cfg.num_attention_heads
        w_qkv, b_qkv = self._qkv[l]

        qkv = layout.grid(linear.forward(x, w_qkv, b_qkv)[0])                                        # (B·T, 3C)
        qkv = qkv.reshape(layout.B, layout.T, 3 * C)
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]                                 # each (B, T, C)
        att = mha.forward(q, k, v, nh, causal=False, mask=layout.key_mask, keep_probs=False)[0]    # (B, T, C)
        del qkv, q, k, v
        att = layout.rows_of(att.reshape(layout.B * layout.T, C))                                  # (N, C) heads concatenated
        att = linear.forward(att, *w("attention.output.dense"))[0]
        a = layernorm.forward(residual.forward(x, att)[0], *w("attention.output.LayerNorm"), eps=eps)[0]  # (N, C)
        del att

        f = np.empty_like(a)                                                                           # (N, C)
        up, down = w("intermediate.dense"), w("output.dense")
        for lo in range(0, len(a), FFN_ROWS):                   # the feed-forward, FFN_ROWS rows at a time
            rows = slice(lo, lo + FFN_ROWS)
            h = linear.forward(a[rows], *up)[0]                                                      # (rows, F)
            h = gelu.forward(h, form=cfg.gelu)[0]
            f[rows] = linear.forward(h, *down)[0]                                                    # (rows, C)
        return layernorm.forward(residual.forward(a, f)[0], *w("output.LayerNorm"), eps=eps)[0]     # (N, C)


@dataclass(frozen=True)
class _Layout:
    """Where the rows sit in the (B, T) grid attention needs: rows (N,) flat indices into B·T, or
    None when every position is a row; key_mask (B, 1, 1, T), True at real keys, or None when
    every key is real."""

    B: int
    T: int
    rows: np.ndarray | None
    key_mask: np.ndarray | None

    def grid(self, a):
        """(N, D) rows -> (B·T, D), zeros where no row sits."""
        if self.rows is None:
            return a
        out = np.zeros((self.B * self.T, a.shape[1]), dtype=a.dtype)
        out[self.rows] = a
        return out

    def rows_of(self, a):
        """(B·T, D) -> the (N, D) rows."""
        return a if self.rows is None else a[self.rows]


# --------------------------------------------------------------------------- validation

def check_tensors(params: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], source: str,
                  prefix: str = "") -> None:
    """CheckpointError (one line naming `source` and the tensor, spelled with `prefix`) unless
    every tensor of `expected` is in `params`, of its shape, floating point and finite."""
    for name, shape in expected.items():
        if name not in params:
            raise CheckpointError(f"{source}: missing tensor {prefix + name!r}")
        t = params[name]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{source}: tensor {prefix + name!r} has shape {tuple(t.shape)}, expected {shape}")
        if not np.issubdtype(t.dtype, np.floating):
            raise CheckpointError(f"{source}: tensor {prefix + name!r} has dtype {t.dtype}, expected a float type")
        if not np.isfinite(t).all():
            raise CheckpointError(f"{source}: tensor {prefix + name!r} holds NaN or inf values")
