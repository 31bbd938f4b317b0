"""One harness for every row of the op table (numformer.ops.table), after tinygrad's op tests.

Each check runs one row on one op set and returns a list of `Result`s, one per compared tensor;
the tests assert that every result is ok, and `numformer check` prints them as a table.

- `against_torch`: forward values, then the gradients of (y ⊙ dy).sum() for a random dy, against
  PyTorch autograd in float64 (torch is passed in, so that nothing here imports it);
- `against_finite_differences`: the same gradients against central differences;
- `float32_against_float64`: float32 results agree with float64 to float32 precision;
- `fast_against_reference`: a fast op, at given block and chunk sizes, against the reference op
  on the same inputs, in float64 or float32;
- `quant_checks`: a row of quantized weights (numformer.ops.quant) against exact rational
  arithmetic, its worst-case bound and PyTorch's bf16, and the linear map with it.

A comparison passes when |ours − ref| <= rtol·|ref| + rtol·atol_frac·max|ref| elementwise, with
finite values and equal shapes. Results report max |ours − ref| and that over max |ref|.
"""

import math
import zlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from numformer.ops import op_set, quant
from numformer.parallel.process import blas_threads

FD_STEP = 1e-6
TORCH_RTOL = 1e-10           # float64, same math: only rounding differs
FLOAT32_RTOL = 2e-4
FAST_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}


@dataclass
class Result:
    case: str
    ops: str                 # "reference" or "fast", or the fast sizes for fast_against_reference
    check: str               # "torch", "finite differences", "float32", "fast = reference"
    tensor: str              # "y", "loss", or the input whose gradient is compared
    abs_err: float
    rel_err: float
    ok: bool

    def __str__(self):
        return (f"{self.case} [{self.ops}] {self.check}, {self.tensor}: max abs err {self.abs_err:.3g}, "
                f"max rel err {self.rel_err:.3g}{'' if self.ok else ' FAIL'}")


def compare(ours, ref, rtol, atol_frac=1e-2):
    """(abs_err, rel_err, ok) of ours against ref; see the module docstring for the rule."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return np.inf, np.inf, False
    if not np.all(np.isfinite(ours)):
        return np.nan, np.inf, False
    if ref.size == 0:
        return 0.0, 0.0, True
    diff = np.abs(ours - ref)
    scale = float(np.max(np.abs(ref)))
    abs_err = float(np.max(diff))
    rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else np.inf)
    ok = bool(np.all(diff <= rtol * np.abs(ref) + rtol * atol_frac * scale))
    return abs_err, rel_err, ok


def make_inputs(case, dtype=np.float64, seed=0):
    """Seeded inputs for a row; float arrays in `dtype`, integer and boolean arrays as built.
    Returns (inputs, rng); rng then draws dy."""
    rng = np.random.default_rng([zlib.crc32(case.id.encode()), seed])
    out = {}
    for name, spec in case.inputs.items():
        if spec is None:
            value = None
        elif isinstance(spec, tuple):
            value = rng.standard_normal(spec)
        elif callable(spec):
            value = spec(rng)
        else:
            value = np.array(spec)
        if value is not None and np.issubdtype(value.dtype, np.floating):
            value = value.astype(dtype)
        out[name] = value
    return out, rng


def run_forward(case, module, inputs, **extra):
    kwargs = {**case.kwargs, **extra}
    if case.seed is not None:
        kwargs["rng"] = np.random.default_rng(case.seed)
    return module.forward(**inputs, **kwargs)


def run_backward(case, module, dout, cache):
    g = module.backward(cache, dloss=dout) if case.loss else module.backward(dout, cache)
    g = g if isinstance(g, tuple) else (g,)
    if len(g) != len(case.grads):
        raise AssertionError(f"{case.id}: backward returned {len(g)} gradients, expected {case.grads}")
    return dict(zip(case.grads, g))


def random_dout(y, rng):
    if np.ndim(y) == 0:
        return float(rng.standard_normal())
    return rng.standard_normal(np.shape(y)).astype(np.asarray(y).dtype)


def _pass(case, ops, inputs, rng, **extra):
    """Forward, a random dy, backward: (y, dy, grads)."""
    module = getattr(op_set(ops), case.op)
    y, cache = run_forward(case, module, inputs, **extra)
    dout = random_dout(y, rng)
    return y, dout, run_backward(case, module, dout, cache)


def _grad_results(case, ops, check, grads, refs, rtol, atol_frac):
    out = []
    for name in case.grads:
        if refs[name] is None:
            ok = grads[name] is None
            out.append(Result(case.id, ops, check, name, 0.0, 0.0, ok))
            continue
        out.append(Result(case.id, ops, check, name, *compare(grads[name], refs[name], rtol, atol_frac)))
    return out


def against_torch(case, ops, torch, seed=0, rtol=TORCH_RTOL, **extra):
    """The row on op set `ops` against torch autograd, in float64."""
    from numformer.reference import ops as torch_ops

    inputs, rng = make_inputs(case, seed=seed)
    y, dout, grads = _pass(case, ops, inputs, rng, **extra)

    def tensor(name, value):
        if not isinstance(value, np.ndarray):
            return value
        t = torch.from_numpy(value.copy())
        return t.requires_grad_(True) if name in case.grads and t.is_floating_point() else t

    tensors = {name: tensor(name, v) for name, v in inputs.items()}
    ty = getattr(torch_ops, case.torch)(**tensors, **case.kwargs)
    (ty * torch.as_tensor(dout, dtype=ty.dtype)).sum().backward()
    refs = {name: (None if inputs[name] is None else
                   tensors[name].grad.numpy() if tensors[name].grad is not None else np.zeros(inputs[name].shape))
            for name in case.grads}
    return ([Result(case.id, ops, "torch", "loss" if case.loss else "y", *compare(y, ty.detach().numpy(), rtol))]
            + _grad_results(case, ops, "torch", grads, refs, rtol, 1e-2))


def numerical_grad(f, x, idx, h):
    """Central differences (f(x + h e_i) − f(x − h e_i)) / 2h for the flat indices idx of x."""
    num = np.empty(len(idx))
    for j, i in enumerate(idx):
        orig = x.flat[i]
        x.flat[i] = orig + h
        f_plus = f()
        x.flat[i] = orig - h
        f_minus = f()
        x.flat[i] = orig
        num[j] = (f_plus - f_minus) / (2 * h)
    return num


def against_finite_differences(case, ops, seed=0, h=FD_STEP, max_points=120):
    """The row's hand-derived gradients on op set `ops` against central differences of
    L = Σ y ⊙ dy, in float64, at up to max_points elements of each input."""
    module = getattr(op_set(ops), case.op)
    inputs, rng = make_inputs(case, seed=seed)
    y, dout, grads = _pass(case, ops, inputs, rng)

    def loss():
        return float(np.sum(np.asarray(run_forward(case, module, inputs)[0]) * dout))

    out = []
    for name in case.grads:
        x = inputs[name]
        if x is None:
            out.append(Result(case.id, ops, "finite differences", name, 0.0, 0.0, grads[name] is None))
            continue
        idx = np.arange(x.size)
        if x.size > max_points:
            idx = rng.choice(x.size, size=max_points, replace=False)
        num = numerical_grad(loss, x, idx, h)
        # central differences carry an absolute rounding error ~ eps·|L|/h, hence atol_frac=1
        out.append(Result(case.id, ops, "finite differences", name,
                          *compare(grads[name].reshape(-1)[idx], num, case.fd_tol, atol_frac=1.0)))
    return out


def _float32_pair(case, seed):
    """The row's inputs in float64 and float32, both float32-exact."""
    inputs64, rng = make_inputs(case, seed=seed)
    inputs64 = {n: (v.astype(np.float32).astype(np.float64)
                    if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
                for n, v in inputs64.items()}
    inputs32 = {n: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
                for n, v in inputs64.items()}
    return inputs64, inputs32, rng


def float32_against_float64(case, ops, seed=0, rtol=FLOAT32_RTOL):
    """float32 in, float32 out (forward and every gradient), agreeing with float64."""
    module = getattr(op_set(ops), case.op)
    inputs64, inputs32, rng = _float32_pair(case, seed)
    y64, c64 = run_forward(case, module, inputs64)
    y32, c32 = run_forward(case, module, inputs32)
    dout = random_dout(y64, rng)
    g64 = run_backward(case, module, dout, c64)
    g32 = run_backward(case, module, dout if np.ndim(dout) == 0 else dout.astype(np.float32), c32)
    dtype_ok = np.asarray(y32).dtype == np.float32 and all(
        g is None or g.dtype == np.float32 for g in g32.values())
    out = [Result(case.id, ops, "float32", "loss" if case.loss else "y", *compare(y32, y64, rtol, 0.1))]
    out += _grad_results(case, ops, "float32", g32, g64, rtol, 0.1)
    if not dtype_ok:
        out.append(Result(case.id, ops, "float32", "dtype of y and gradients", np.inf, np.inf, False))
    return out


def fast_against_reference(case, sizes, dtype=np.float64, seed=0):
    """The fast op at block and chunk sizes `sizes` against the reference op, on the same inputs
    and the same dy, in `dtype` (float32 inputs are float32-exact in both)."""
    dtype = np.dtype(dtype)
    rtol = FAST_RTOL[dtype]
    label = ", ".join(f"{k} {v}" for k, v in sizes.items()) or "default sizes"
    label = f"fast, {label}, {dtype.name}"
    inputs64, inputs32, rng = _float32_pair(case, seed)
    inputs = inputs32 if dtype == np.float32 else make_inputs(case, seed=seed)[0]
    ref_module = getattr(op_set("reference"), case.op)
    fast_module = getattr(op_set("fast"), case.op)
    y_ref, c_ref = run_forward(case, ref_module, inputs)
    dout = random_dout(y_ref, rng)
    g_ref = run_backward(case, ref_module, dout, c_ref)
    with blas_threads(1):     # as the threaded step runs it: the fast linear map's products on MKL, if installed
        y_fast, c_fast = run_forward(case, fast_module, inputs, **sizes)
        g_fast = run_backward(case, fast_module, dout, c_fast)
    out = [Result(case.id, label, "fast = reference", "loss" if case.loss else "y",
                  *compare(y_fast, y_ref, rtol, 0.1))]
    return out + _grad_results(case, label, "fast = reference", g_fast, g_ref, rtol, 0.1)


def failures(results):
    """The results that did not pass, one per line, for an assertion message."""
    return "\n".join(str(r) for r in results if not r.ok)


# ----------------------------------------------------------------------------- quantized weights

def quant_weight(case, seed=0):
    """The row's weight as float32, seeded like make_inputs."""
    rng = np.random.default_rng([zlib.crc32(case.id.encode()), seed])
    spec = case.weight
    w = rng.standard_normal(spec) if isinstance(spec, tuple) else spec(rng) if callable(spec) else spec
    return np.asarray(w).astype(np.float32), rng


def _nearest_float32(r: Fraction) -> np.float32:
    """The float32 nearest to the rational r, ties to the even one (finite r within range)."""
    f = np.float32(float(r))                   # within one float32 step of the answer
    candidates = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - r), int(np.array(c).view(np.uint32)) & 1))


def int8_exact(w):
    """(q, d, deq) of int8 quantization computed in exact rational arithmetic, block by block:
    d the float32 nearest to max|w|/127, q = w/d rounded half away from zero (clamped to ±127),
    deq the float32 nearest to d·q."""
    rows, K = w.shape
    nb = -(-K // 32)
    q = np.zeros((rows, K), dtype=np.int64)
    d = np.zeros((rows, nb), dtype=np.float32)
    deq = np.zeros((rows, K), dtype=np.float32)
    for i in range(rows):
        for b in range(nb):
            block = [Fraction(float(v)) for v in w[i, 32 * b:32 * b + 32]]
            scale = _nearest_float32(max(abs(v) for v in block) / 127)
            d[i, b] = scale
            for j, v in enumerate(block):
                if scale == 0:
                    continue
                r = v / Fraction(float(scale))
                n = math.floor(abs(r) + Fraction(1, 2))
                n = max(-127, min(127, n if r >= 0 else -n))
                q[i, 32 * b + j] = n
                deq[i, 32 * b + j] = _nearest_float32(Fraction(float(scale)) * n)
    return q, d, deq


def bf16_exact(w):
    """The bf16 bit patterns of w computed from the values: the nearest number with 8 significant
    bits (quantum 2^-133 at the smallest), ties to even, ±inf from 2^128 on; NaN is left to the
    caller (0 here)."""
    out = np.zeros(w.shape, dtype=np.uint16)
    for idx, v in np.ndenumerate(w):
        v = float(v)
        if math.isnan(v):
            continue
        sign = 0x8000 if math.copysign(1.0, v) < 0 else 0
        a = abs(v)
        if math.isinf(a):
            out[idx] = sign | 0x7F80
            continue
        if a == 0:
            out[idx] = sign
            continue
        _, e = math.frexp(a)                                       # a = m·2^e, ½ <= m < 1
        quantum = Fraction(2) ** max(e - 8, -133)                  # 8 significant bits
        value = round(Fraction(a) / quantum) * quantum             # round() on a Fraction: half to even
        if value >= Fraction(2) ** 128:
            out[idx] = sign | 0x7F80
            continue
        out[idx] = sign | int(np.array(np.float32(float(value))).view(np.uint32)) >> 16
    return out


def quant_checks(case, torch=None, seed=0):
    """The checks of a quantization row (numformer.ops.table.QUANT_CASES): quantize against the
    exact computation (q, d and the dequantized values for int8; the bits for bf16, and NaN kept
    NaN), the worst-case bound, PyTorch's bf16 conversion when torch is given, and the linear map
    with the quantized weight on both op sets against float64."""
    w, rng = quant_weight(case, seed)
    qw = quant.quantize(w, case.format)
    with np.errstate(invalid="ignore"):                            # a signalling NaN, widened
        deq = quant.dequantize(qw).astype(np.float64)
    out = []

    def result(check, tensor, ours, ref, rtol=0.0):
        out.append(Result(case.id, "quant", check, tensor, *compare(ours, ref, rtol, atol_frac=0.0)))

    finite = np.isfinite(w)
    if case.format == "int8":
        q, d, exact = int8_exact(w)
        out.append(Result(case.id, "quant", "exact", "q", float(np.abs(qw.q - q).max()), 0.0,
                          bool(np.array_equal(qw.q, q))))
        out.append(Result(case.id, "quant", "exact", "d", float(np.abs(qw.d - d).max()), 0.0,
                          bool(np.array_equal(qw.d, d))))
        result("exact", "deq", deq, exact)
        # |w − deq| <= (d/2)(1 + 2^-16), for blocks whose scale is a normal float32
        scale = np.repeat(qw.d.astype(np.float64), 32, axis=-1)[..., :w.shape[-1]]
        normal = scale >= 2.0 ** -126
        ratio = np.abs(w - deq)[normal] / (scale[normal] / 2 * (1 + 2.0 ** -16))
        worst = float(ratio.max()) if ratio.size else 0.0
        out.append(Result(case.id, "quant", "bound", "|w − deq| / ((d/2)(1 + 2^-16))", worst, worst, worst <= 1.0))
    else:
        exact = bf16_exact(w)
        nan = ~np.isnan(w)
        same = bool(np.array_equal(qw.bits[nan], exact[nan])) and bool(np.all(np.isnan(deq[~nan])))
        out.append(Result(case.id, "quant", "exact", "bits", float(np.abs(qw.bits.astype(np.int64) - exact).max()),
                          0.0, same))
        # |w − deq| <= 2^-8 |w| (normal numbers), 2^-134 (subnormal ones); finite results only
        ok = finite & np.isfinite(deq)
        a = np.abs(w[ok].astype(np.float64))
        limit = np.where(a >= 2.0 ** -126, 2.0 ** -8 * a, 2.0 ** -134)
        ratio = np.abs(w[ok] - deq[ok]) / limit
        worst = float(ratio.max()) if ratio.size else 0.0
        out.append(Result(case.id, "quant", "bound", "|w − deq| / (2^-8 |w|)", worst, worst, worst <= 1.0))
        if torch is not None and case.torch:
            theirs = torch.from_numpy(w.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            out.append(Result(case.id, "quant", "torch", "bits", float(np.abs(qw.bits.astype(np.int64) - theirs).max()),
                              0.0, bool(np.array_equal(qw.bits, theirs))))
    for M in case.products:
        x = rng.standard_normal((M, w.shape[-1])).astype(np.float32)
        b = rng.standard_normal(w.shape[0]).astype(np.float32)
        dy = rng.standard_normal((M, w.shape[0])).astype(np.float32)
        ref_y = x.astype(np.float64) @ deq.T + b                    # float64 products of the same values
        ref_dx = dy.astype(np.float64) @ deq
        for ops in ("reference", "fast"):
            linear = op_set(ops).linear
            y, cache = linear.forward(x, qw, b)
            dx, dweight, dbias = linear.backward(dy, cache)
            label = f"{ops}, {M} row{'s' if M > 1 else ''}"
            out.append(Result(case.id, label, "product", "y", *compare(y, ref_y, FAST_RTOL[np.dtype(np.float32)], 1.0)))
            out.append(Result(case.id, label, "product", "dx", *compare(dx, ref_dx, FAST_RTOL[np.dtype(np.float32)], 1.0)))
            out.append(Result(case.id, label, "product", "no dW, db", 0.0, 0.0, dweight is None and dbias is None
                              and y.dtype == np.float32 and dx.dtype == np.float32))
    return out
