"""`numformer check`: gradient-check every op.

For each op, on small random shapes drawn from a seed, in float64:

- finite differences: every element of every differentiable input is nudged by ±h and the central
  difference (L(x + h) − L(x − h)) / 2h of L = Σ y ⊙ dy (dy random) is compared with the op's
  hand-derived backward;
- PyTorch, when it can be imported (numformer itself never needs it): the forward output and
  the gradients of (y ⊙ dy).sum() from torch autograd.

Errors are reported as max |ours − ref| and that divided by max |ref|. This is the tool to run
after changing an op. `run_checks()` returns the rows for use from Python.
"""

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from numformer import ops

FD_STEP = 1e-6
FD_TOL = 1e-6          # max rel error allowed against finite differences
TORCH_TOL = 1e-10      # max rel error allowed against PyTorch (same math, float64)


@dataclass
class Row:
    """One line of the report: one tensor of one op."""
    op: str
    tensor: str
    fd_abs: float | None = None        # None: not checked this way
    fd_rel: float | None = None
    torch_abs: float | None = None
    torch_rel: float | None = None

    @property
    def ok(self) -> bool:
        fd_ok = self.fd_rel is None or self.fd_rel <= FD_TOL
        torch_ok = self.torch_rel is None or self.torch_rel <= TORCH_TOL
        return fd_ok and torch_ok


@dataclass
class _Spec:
    name: str                                   # label in the report
    module: Any                                 # numformer.ops module
    inputs: dict                                # name -> ndarray (float64) / int / bool / None
    grads: tuple                                # names of backward's outputs, in order
    torch_fn: Callable | None = None            # (torch, **tensors, **kwargs) -> tensor
    kwargs: dict = field(default_factory=dict)
    seed: int | None = None                     # forward gets a fresh rng with this seed
    loss: bool = False                          # scalar output, backward(cache, dloss)

    def forward(self, inputs):
        kwargs = dict(self.kwargs)
        if self.seed is not None:
            kwargs["rng"] = np.random.default_rng(self.seed)
        return self.module.forward(**inputs, **kwargs)

    def backward(self, dout, cache):
        g = self.module.backward(cache, dloss=dout) if self.loss else self.module.backward(dout, cache)
        return dict(zip(self.grads, g if isinstance(g, tuple) else (g,)))


# ---- PyTorch references (torch is passed in; it is imported only if available) ----------------

def _t_causal(torch, Tq, Tk):
    return torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)


def _t_attention(torch, q, k, v, causal=False, mask=None, dropout_p=0.0):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones(s.shape, dtype=torch.bool)
    if causal:
        allowed = allowed & _t_causal(torch, q.shape[-2], k.shape[-2])
    if mask is not None:
        allowed = allowed & mask
    any_key = allowed.any(dim=-1, keepdim=True)
    s = torch.where(any_key, s.masked_fill(~allowed, -math.inf), torch.zeros_like(s))
    return (torch.softmax(s, dim=-1) * any_key) @ v


def _t_mha(torch, x, w_qkv, b_qkv, w_o, b_o, n_head, causal=True, mask=None):
    B, T, C = x.shape
    qkv = torch.nn.functional.linear(x, w_qkv, b_qkv)
    q, k, v = (t.reshape(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=-1))
    a = _t_attention(torch, q, k, v, causal=causal, mask=mask)
    return torch.nn.functional.linear(a.transpose(1, 2).reshape(B, T, C), w_o, b_o)


def _t_layernorm(torch, x, weight, bias, eps=1e-5):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


def _t_cross_entropy(torch, logits, targets, ignore_index=-1):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=ignore_index)


def _specs(seed):
    """The checks, on shapes drawn from `seed`."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.standard_normal(shape)                     # noqa: E731
    n = lambda lo, hi: int(rng.integers(lo, hi + 1))                   # noqa: E731
    # C >= 3: with C = 2 LayerNorm's x̂ is ±1 whatever x is, dx is ~eps/var, and finite
    # differences of a gradient that small are rounding noise
    B, T, C, V = n(1, 3), n(1, 5), n(3, 6), n(3, 8)
    nh = int(rng.choice([d for d in (1, 2, 3) if C % d == 0]))
    Tq, Tk = n(1, 3), n(4, 6)
    pad = np.ones((B, 1, 1, T + 1), dtype=bool)
    pad[-1, ..., rng.integers(1, T + 1):] = False                     # last sequence is padded
    empty = rng.random((B, 2, Tq + 1, Tk)) < 0.7
    empty[..., 0, :] = False                                          # first query sees no key,
    empty[..., 1:, 0] = True                                          # the others at least one
    targets = rng.integers(0, V, size=(B, T + 1))
    targets[0, 0] = -1                                                # an ignored target (T + 1 >= 2
                                                                      # keeps one that counts)
    F = lambda torch: torch.nn.functional                              # noqa: E731
    return [
        _Spec("linear", ops.linear, {"x": r(B, T, C), "weight": r(C + 1, C), "bias": r(C + 1)},
              ("x", "weight", "bias"), lambda torch, x, weight, bias: F(torch).linear(x, weight, bias)),
        _Spec("embedding", ops.embedding, {"ids": rng.integers(0, V, size=(B, T + 2)), "table": r(V, C)},
              ("table",), lambda torch, ids, table: F(torch).embedding(ids, table)),
        _Spec("attention causal", ops.attention, {"q": r(B, 2, T, C), "k": r(B, 2, T, C), "v": r(B, 2, T, 3)},
              ("q", "k", "v"), _t_attention, {"causal": True}),
        _Spec("attention cross, Tq<Tk, causal", ops.attention,
              {"q": r(B, Tq, C), "k": r(B, Tk, C), "v": r(B, Tk, 2)}, ("q", "k", "v"), _t_attention,
              {"causal": True}),
        _Spec("attention, empty rows", ops.attention,
              {"q": r(B, 2, Tq + 1, C), "k": r(B, 2, Tk, C), "v": r(B, 2, Tk, 3), "mask": empty},
              ("q", "k", "v"), _t_attention),
        _Spec("attention dropout", ops.attention, {"q": r(B, 2, T, C), "k": r(B, 2, T, C), "v": r(B, 2, T, 3)},
              ("q", "k", "v"), None, {"causal": True, "dropout_p": 0.3}, seed=seed),
        _Spec("mha causal", ops.mha,
              {"x": r(B, T, 2 * C), "w_qkv": r(6 * C, 2 * C), "b_qkv": r(6 * C), "w_o": r(2 * C, 2 * C),
               "b_o": r(2 * C)}, ("x", "w_qkv", "b_qkv", "w_o", "b_o"), _t_mha, {"n_head": nh}),
        _Spec("mha padding mask", ops.mha,
              {"x": r(B, T + 1, C), "w_qkv": r(3 * C, C), "b_qkv": None, "w_o": r(C, C), "b_o": r(C),
               "mask": pad}, ("x", "w_qkv", "b_qkv", "w_o", "b_o"), _t_mha,
              {"n_head": nh, "causal": False}),
        _Spec("layernorm", ops.layernorm, {"x": r(B, T, C), "weight": r(C), "bias": r(C)},
              ("x", "weight", "bias"), _t_layernorm),
        _Spec("gelu tanh", ops.gelu, {"x": 4 * r(B, T, C)}, ("x",),
              lambda torch, x, approximate: F(torch).gelu(x, approximate=approximate), {"approximate": "tanh"}),
        _Spec("gelu exact", ops.gelu, {"x": 4 * r(B, T, C)}, ("x",),
              lambda torch, x, approximate: F(torch).gelu(x, approximate=approximate), {"approximate": "none"}),
        _Spec("softmax", ops.softmax, {"x": 3 * r(B, T, V)}, ("x",),
              lambda torch, x: torch.softmax(x, dim=-1)),
        _Spec("cross_entropy", ops.cross_entropy, {"logits": r(B, T + 1, V), "targets": targets}, ("logits",),
              _t_cross_entropy, loss=True),
        _Spec("dropout", ops.dropout, {"x": r(B, T, C)}, ("x",), None, {"p": 0.3}, seed=seed),
        _Spec("residual", ops.residual, {"x": r(B, T, C), "fx": r(B, T, C)}, ("x", "fx"),
              lambda torch, x, fx: x + fx),
    ]


def _errors(ours, ref):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return math.inf, math.inf
    if not np.all(np.isfinite(ours)):
        return math.nan, math.inf
    abs_err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return abs_err, (abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf))


def _finite_differences(spec, inputs, dout, name):
    x = inputs[name]
    num = np.empty(x.size)
    for i in range(x.size):
        orig = x.flat[i]
        x.flat[i] = orig + FD_STEP
        f_plus = np.sum(np.asarray(spec.forward(inputs)[0]) * dout)
        x.flat[i] = orig - FD_STEP
        f_minus = np.sum(np.asarray(spec.forward(inputs)[0]) * dout)
        x.flat[i] = orig
        num[i] = (f_plus - f_minus) / (2 * FD_STEP)
    return num.reshape(x.shape)


def _import_torch():
    try:
        import torch
    except Exception:            # not installed, or broken: finite differences only
        return None
    return torch


def run_checks(use_torch=True, seed=0):
    """Run every check; returns (rows, torch_version or None when PyTorch was not used)."""
    torch = _import_torch() if use_torch else None
    rows = []
    for spec in _specs(seed):
        rng = np.random.default_rng([seed, len(rows)])
        inputs = spec.inputs
        y, cache = spec.forward(inputs)
        dout = float(rng.standard_normal()) if np.ndim(y) == 0 else rng.standard_normal(np.shape(y))
        grads = spec.backward(dout, cache)

        t_grads = t_y = None
        if torch is not None and spec.torch_fn is not None:
            tensors = {k: (torch.from_numpy(v.copy()).requires_grad_(k in spec.grads and v.dtype == np.float64)
                           if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}
            ty = spec.torch_fn(torch, **tensors, **spec.kwargs)
            (ty * torch.as_tensor(dout, dtype=ty.dtype)).sum().backward()
            t_y = ty.detach().numpy()
            t_grads = {k: (tensors[k].grad.numpy() if tensors[k].grad is not None
                           else np.zeros(tensors[k].shape)) for k in spec.grads if inputs[k] is not None}
            rows.append(Row(spec.name, "loss" if spec.loss else "y", None, None, *_errors(y, t_y)))

        for name in spec.grads:
            if inputs[name] is None:
                continue
            row = Row(spec.name, name, *_errors(grads[name], _finite_differences(spec, inputs, dout, name)))
            if t_grads is not None:
                row.torch_abs, row.torch_rel = _errors(grads[name], t_grads[name])
            rows.append(row)
    return rows, (torch.__version__ if torch is not None else None)


def format_table(rows, with_torch=True):
    """The report as aligned text lines."""
    header = ["op", "tensor", "fd max abs err", "fd max rel err"]
    if with_torch:
        header += ["torch max abs err", "torch max rel err"]
    header.append("result")
    fmt = lambda v: "-" if v is None else f"{v:.2e}"                   # noqa: E731
    body = []
    for r in rows:
        cells = [r.op, r.tensor, fmt(r.fd_abs), fmt(r.fd_rel)]
        if with_torch:
            cells += [fmt(r.torch_abs), fmt(r.torch_rel)]
        cells.append("OK" if r.ok else "FAIL")
        body.append(cells)
    widths = [max(len(c[i]) for c in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)   # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header), line(["-" * w for w in widths]), *(line(c) for c in body)]


def add_arguments(parser):
    parser.add_argument("--no-torch", action="store_true",
                        help="finite differences only, even if PyTorch is installed")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random shapes and values (default 0)")


def main(args) -> int:
    rows, torch_version = run_checks(use_torch=not args.no_torch, seed=args.seed)
    with_torch = torch_version is not None
    for line in format_table(rows, with_torch=with_torch):
        print(line)
    failed = [r for r in rows if not r.ok]
    print()
    print(f"float64, seed {args.seed}; pass if rel err <= {FD_TOL:g} against finite differences (h = {FD_STEP:g})"
          + (f" and <= {TORCH_TOL:g} against PyTorch {torch_version}" if with_torch else ""))
    if not with_torch:
        print("PyTorch comparison skipped (--no-torch)" if args.no_torch
              else "PyTorch is not installed: finite differences only")
    if failed:
        print(f"FAIL: {len(failed)} of {len(rows)} checks failed", file=sys.stderr)
        return 1
    print(f"all {len(rows)} checks OK")
    return 0
