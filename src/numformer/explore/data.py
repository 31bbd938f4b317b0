"""The numbers the explorer page draws, as one JSON-ready dict (`explore_data`).

The keys `tokens`, `token_ids` and `attention` are a public contract (see the package docstring);
the others are the page's own. Every array is rounded to what a picture or a hover needs, at a
precision each key's comment gives, so a page stays small.
"""

from __future__ import annotations

import math

import numpy as np

from numformer.explore.formulas import formulas_data
from numformer.explore.trace import head, position_table, trace
from numformer.model.config import SINUSOIDAL_FORMS
from numformer.ops import rope

# A page keeps every position's full logits when T·V is at most this many numbers (the default
# model at its full context: 64 · 65). Beyond that each position keeps its LOGITS_TOP_MIN or more
# most likely tokens, and the page says that its sampling controls work on those.
LOGITS_BUDGET = 1 << 19
LOGITS_TOP_MIN = 256
# The page lists every token's string when the vocabulary has at most this many tokens, else
# only the tokens it shows.
VOCAB_FULL = 4096
# The positions panel shows the position table (a Llama: RoPE's cos and sin) for this many
# numbers' worth of positions.
POSITION_VALUES = 1 << 16
# The training panel draws at most about this many rows of metrics.jsonl; a longer run is thinned
# to the rows that keep its curves' shape (_thin).
METRICS_ROWS = 10_000
ATTENTION_DECIMALS = 6
LOGIT_DECIMALS = 5


def _round(a, decimals: int):
    """A float array rounded to `decimals` places, as nested lists (JSON prints the shortest
    decimal that reads back as the same double: 0.123457, not 0.12345699965953827). NaN and ±inf,
    which JSON has no way to write, become None (null): the page shows them as not finite."""
    return _finite_list(np.round(np.asarray(a, dtype=np.float64), decimals))


def _finite_list(a):
    """A float64 array as nested lists, NaN and ±inf as None."""
    finite = np.isfinite(a)
    if finite.all():
        return a.tolist()
    a = a.astype(object)
    a[~finite] = None
    return a.tolist()


def _not_finite(tr) -> str | None:
    """A line saying how many of the trace's numbers are NaN or ±inf (weights so large that float32
    overflows), or None when all are finite."""
    parts = [("logits", tr.logits), ("attention weights", np.stack(tr.attention)),
             ("values of the residual stream", tr.residual)]
    bad = [f"{a.size - np.count_nonzero(np.isfinite(a)):,} of {a.size:,} {what}"
           for what, a in parts if not np.isfinite(a).all()]
    if not bad:
        return None
    return (f"the model's numbers overflow float32: {', '.join(bad)} are not finite (NaN or ±inf); "
            f"the page marks them and draws no distribution from them")


def _softmax64(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)                      # numerical care: max-subtraction
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def readable(text: str) -> str:
    """`text` as UTF-8 can carry it: bytes that are not UTF-8 (in a file name, which Python hands
    over as lone surrogates) become U+FFFD, the replacement character."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:                   # a lone surrogate that stands for no byte
        return text.encode("utf-8", "replace").decode("utf-8")


def token_string(tokenizer, i: int) -> str:
    """The text of one token id ("\\ufffd" where a BPE token is part of a UTF-8 character)."""
    return tokenizer.decode(np.array([i], dtype=np.int64))


@np.errstate(over="ignore", invalid="ignore", divide="ignore")   # overflow is reported once, in "overflow"
def explore_data(model, ids, *, tokenizer=None, metrics=None, sampling=None, source=None,
                 notice=None) -> dict:
    """Everything the page draws, for token ids (T,) with T <= block_size.

    tokenizer: turns ids into the strings shown (default: model.tokenizer).
    metrics: the rows of a run's metrics.jsonl (step, train_loss, val_loss, lr), or None.
    sampling: the controls' starting values, {"temperature", "top_k", "top_p"}.
    source: the checkpoint's name, shown in the header (see `readable`). notice: a line shown under it.

    Numbers that are not finite (weights whose products overflow float32) are None in the dict,
    and "overflow" is a line that says how many there are (None when there are none); the page
    shows it beside `notice`.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("explore_data needs a tokenizer to show the tokens as text")
    cfg = model.config
    tr = trace(model, ids)
    T, V, L = len(tr.ids), cfg.vocab_size, cfg.n_layer
    ids = tr.ids
    overflow = _not_finite(tr)

    # ---- next-token distributions (panels 2 and 3)
    probs = _softmax64(tr.logits)                                      # (T, V)
    order = np.argsort(-probs, axis=-1, kind="stable")                 # (T, V) most likely first
    top5 = order[:, :5]
    complete = T * V <= LOGITS_BUDGET
    if complete:
        logits = {"complete": True, "ids": None, "values": _round(tr.logits, LOGIT_DECIMALS)}
        shown = set(range(V))
    else:
        keep = max(LOGITS_TOP_MIN, LOGITS_BUDGET // T)
        kept = order[:, :keep]                                         # (T, keep)
        values = np.take_along_axis(np.asarray(tr.logits, dtype=np.float64), kept, axis=-1)
        logits = {"complete": False, "ids": kept.tolist(), "values": _round(values, LOGIT_DECIMALS)}
        shown = set(kept.ravel().tolist())

    # probability the model gave each prompt token, from the position before it
    token_prob = [None] + _finite_list(probs[np.arange(T - 1), ids[1:]])

    # ---- logit lens: the final LayerNorm and the head on the stream after each block
    lens_ids, lens_p, lens_next = [], [], []
    for layer in range(L + 1):
        p = _softmax64(head(model, tr.residual[layer]))                # (T, V)
        top = p.argmax(axis=-1)                                        # (T,)
        lens_ids.append(top.tolist())
        lens_p.append(_round(p[np.arange(T), top], 4))
        lens_next.append(_round(p[np.arange(T - 1), ids[1:]], 4) + [None])
        shown.update(top.tolist())
    shown.update(top5.ravel().tolist())
    shown.update(ids.tolist())

    if V <= VOCAB_FULL:
        vocab = [token_string(tokenizer, i) for i in range(V)]
    else:
        vocab = {str(i): token_string(tokenizer, i) for i in sorted(shown)}

    # ---- inside the stream: norms and positions
    norms = np.linalg.norm(tr.residual.astype(np.float64), axis=-1)    # (L + 1, T)
    family = cfg.family

    data = {
        "format": 1,
        "tokens": [token_string(tokenizer, int(i)) for i in ids],
        "token_ids": ids.tolist(),
        # n_layer lists of n_head (T, T) matrices, rounded to ATTENTION_DECIMALS places
        "attention": [_round(a, ATTENTION_DECIMALS) for a in tr.attention],
        "attention_decimals": ATTENTION_DECIMALS,
        # Llama: the key/value head each query head reads (grouped-query attention); GPT: None
        "kv_heads": None if tr.kv_heads is None else tr.kv_heads.tolist(),
        "model": {**cfg.to_dict(), "family": family, "n_params": int(sum(v.size for _, v in model.params.items())),
                  "source": None if source is None else readable(str(source))},
        "notice": "; ".join(n for n in (notice, overflow) if n) or None,
        "overflow": overflow,
        "vocab": vocab,
        "logits": logits,                                  # (T, V) or (T, kept) rounded logits
        "logit_decimals": LOGIT_DECIMALS,
        "token_prob": token_prob,                          # p(token t | tokens < t); None at t = 0
        "top5": {"ids": top5.tolist(), "probs": _round(np.take_along_axis(probs, top5, axis=-1), 5)},
        "lens": {"ids": lens_ids, "probs": lens_p, "next_probs": lens_next},
        "residual_norms": _round(norms, 4),                # (n_layer + 1, T)
        "positions": _positions(model, T),
        # the rows the training panel draws (thinned past METRICS_ROWS) and how many the run has
        "metrics": _thin(rows, METRICS_ROWS) if (rows := _metric_rows(metrics)) else None,
        "metrics_count": len(rows) if rows else 0,
        "sampling": {"temperature": 0.8, "top_k": 200, "top_p": None, **(sampling or {})},
        "formulas": formulas_data(family),
    }
    return data


def _positions(model, T: int) -> dict:
    """What the positions panel draws, for the whole context when it is small, else for as many
    positions as POSITION_VALUES numbers allow, and at least the prompt's.

    A GPT: the (n_pos, C) table it adds to the embeddings (the page computes the positions'
    similarity). A Llama has no table: RoPE turns each pair (x_i, x_{i+hs/2}) of a head's q and k
    by the angle p·ω_i; the panel shows cos and sin of those angles, (n_pos, hs/2) each, from the
    tables ops.rope itself computes, and ω (hs/2,), read back from position 1's angles."""
    cfg = model.config
    if cfg.family == "llama":
        hs = cfg.head_size
        n_pos = min(cfg.block_size, max(T, POSITION_VALUES // hs))
        cos, sin = rope.tables(n_pos, hs, cfg.rope_theta)              # (n_pos, hs): each angle twice
        c1, s1 = rope.tables(2, hs, cfg.rope_theta)
        omega = np.arctan2(s1[1, :hs // 2], c1[1, :hs // 2])           # ω_i = the angle at p = 1 (all < π)
        return {"kind": "rope", "theta": cfg.rope_theta, "head_size": hs, "omega": omega.tolist(),
                "cos": _round(cos[:, :hs // 2], 4), "sin": _round(sin[:, :hs // 2], 4)}
    n_pos = min(cfg.block_size, max(T, POSITION_VALUES // cfg.n_embd))
    pos = position_table(model, n_pos).astype(np.float64)             # (n_pos, C)
    _, pos_divisor = SINUSOIDAL_FORMS[cfg.sinusoidal_form](cfg.n_embd)  # the table is P / pos_divisor
    return {"kind": cfg.pos_encoding, "scale": None if cfg.pos_encoding == "learned" else 1.0 / pos_divisor,
            "table": _round(pos, 4)}


def _metric_rows(rows):
    """The rows of metrics.jsonl the page plots (step, train_loss, val_loss, lr); a value that is
    not a finite float64 becomes None, and a row whose step is no integer in 0 .. 2**53 (what a
    browser's numbers hold exactly) is left out."""
    if not rows:
        return None

    def number(v):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        try:
            return v if math.isfinite(v) else None
        except OverflowError:                 # an int beyond float64's range
            return None

    out = [{"step": r["step"], **{k: number(r.get(k)) for k in ("train_loss", "val_loss", "lr")}}
           for r in rows if isinstance(r, dict) and type(r.get("step")) is int and 0 <= r["step"] <= 2**53]
    return out or None


_CURVES = ("train_loss", "val_loss", "lr")


def _thin(rows, limit: int):
    """At most `limit` of `rows` (limit >= 11), keeping the curves' shape: the run is cut into
    (limit - 1) // 10 stretches of consecutive rows, and each keeps its first row and, for every
    curve, the rows where the curve is lowest and highest and the first where it has no value (a
    gap in the line). The last row is kept too. `limit` rows or fewer are kept whole."""
    n = len(rows)
    if n <= limit:
        return rows
    stretches = (limit - 1) // (1 + 3 * len(_CURVES))
    keep = {n - 1}
    for b in range(stretches):
        lo, hi = b * n // stretches, (b + 1) * n // stretches
        keep.add(lo)
        for key in _CURVES:
            known = [(rows[i][key], i) for i in range(lo, hi) if rows[i][key] is not None]
            if known:
                keep.update((min(known)[1], max(known)[1]))
            gap = next((i for i in range(lo, hi) if rows[i][key] is None), None)
            if gap is not None:
                keep.add(gap)
    return [rows[i] for i in sorted(keep)]
