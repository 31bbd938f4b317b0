"""One harness for every op, after tinygrad's helper_test_op.

A `Case` is a row of the table in test_ops.py: our op module, the inputs (shapes or builders),
which inputs are differentiable, and a PyTorch function computing the same thing. The same three
functions check every row:

- `check_against_torch`: forward values, then the gradients of (out * dout).sum() for a random
  dout, against torch autograd in float64;
- `check_finite_differences`: the same gradients against central differences (no torch);
- `check_float32`: float32 results agree with float64 to float32 precision, in float32.

Adding an op means adding a row.
"""

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class Case:
    id: str
    op: Any                                  # a numformer.ops module with forward/backward
    inputs: dict                             # name -> shape (standard normal), callable(rng), array, or None
    grads: tuple                             # names of backward's outputs, in its return order
    torch_fn: Callable | None = None         # (**tensors, **kwargs) -> tensor; None: no torch row
    kwargs: dict = field(default_factory=dict)
    seed: int | None = None                  # forward gets rng=default_rng(seed) afresh each call
    loss: bool = False                       # scalar output; backward(cache, dloss)
    fd_tol: float = 1e-6                     # tolerance of the finite-difference comparison

    def __str__(self):
        return self.id


def make_inputs(case, dtype=np.float64):
    """Seeded inputs for a case; float arrays in `dtype`, integer/bool arrays as built."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
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


def run_forward(case, inputs):
    kwargs = dict(case.kwargs)
    if case.seed is not None:
        kwargs["rng"] = np.random.default_rng(case.seed)
    return case.op.forward(**inputs, **kwargs)


def run_backward(case, dout, cache):
    g = case.op.backward(cache, dloss=dout) if case.loss else case.op.backward(dout, cache)
    g = g if isinstance(g, tuple) else (g,)
    assert len(g) == len(case.grads), f"backward returned {len(g)} gradients, expected {case.grads}"
    return dict(zip(case.grads, g))


def random_dout(y, rng):
    if np.ndim(y) == 0:
        return float(rng.standard_normal())
    return rng.standard_normal(np.shape(y)).astype(np.asarray(y).dtype)


def assert_close(ours, ref, what, rtol, atol_frac=1e-2):
    """Elementwise |ours − ref| <= rtol·|ref| + rtol·atol_frac·max|ref|; exact zeros when ref is
    all zero. NaN or inf in ours always fails."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite values"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * atol_frac * scale, err_msg=what)


def _to_torch(name, value, case):
    if value is None or not isinstance(value, np.ndarray):
        return value
    t = torch.from_numpy(value.copy())
    if name in case.grads and t.is_floating_point():
        t.requires_grad_(True)
    return t


def check_against_torch(case, rtol=1e-10):
    inputs, rng = make_inputs(case)
    y, cache = run_forward(case, inputs)
    dout = random_dout(y, rng)
    grads = run_backward(case, dout, cache)

    tensors = {name: _to_torch(name, v, case) for name, v in inputs.items()}
    ty = case.torch_fn(**tensors, **case.kwargs)
    (ty * torch.as_tensor(dout, dtype=ty.dtype)).sum().backward()

    assert np.asarray(y).dtype == np.float64
    assert_close(y, ty.detach().numpy(), f"{case.id}: forward", rtol)
    for name in case.grads:
        if inputs[name] is None:
            assert grads[name] is None, f"{case.id}: gradient of absent {name} should be None"
            continue
        t = tensors[name]
        ref = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        assert grads[name].dtype == np.float64, f"{case.id}: d{name} dtype {grads[name].dtype}"
        assert_close(grads[name], ref, f"{case.id}: d{name}", rtol)


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


def check_finite_differences(case, h=1e-6, max_points=120):
    inputs, rng = make_inputs(case)
    y, cache = run_forward(case, inputs)
    dout = random_dout(y, rng)
    grads = run_backward(case, dout, cache)

    def scalar_loss():
        return float(np.sum(np.asarray(run_forward(case, inputs)[0]) * dout))

    for name in case.grads:
        x = inputs[name]
        if x is None:
            assert grads[name] is None
            continue
        idx = np.arange(x.size)
        if x.size > max_points:
            idx = rng.choice(x.size, size=max_points, replace=False)
        num = numerical_grad(scalar_loss, x, idx, h)
        # central differences carry an absolute rounding error ~ eps·|L|/h, hence atol_frac=1
        assert_close(grads[name].reshape(-1)[idx], num, f"{case.id}: d{name} vs finite differences",
                     rtol=case.fd_tol, atol_frac=1.0)


def check_float32(case, rtol=2e-4):
    """float32 in, float32 out, agreeing with float64 on the same (float32-exact) inputs."""
    inputs64, rng = make_inputs(case)
    inputs64 = {n: (v.astype(np.float32).astype(np.float64)
                    if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
                for n, v in inputs64.items()}
    inputs32 = {n: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
                for n, v in inputs64.items()}
    y64, c64 = run_forward(case, inputs64)
    y32, c32 = run_forward(case, inputs32)
    dout = random_dout(y64, rng)
    dout32 = dout if np.ndim(dout) == 0 else dout.astype(np.float32)
    g64 = run_backward(case, dout, c64)
    g32 = run_backward(case, dout32, c32)

    assert np.asarray(y32).dtype == np.float32, f"{case.id}: y dtype {np.asarray(y32).dtype}"
    assert_close(y32, y64, f"{case.id}: float32 forward", rtol, atol_frac=0.1)
    for name in case.grads:
        if g64[name] is None:
            assert g32[name] is None
            continue
        assert g32[name].dtype == np.float32, f"{case.id}: d{name} dtype {g32[name].dtype}"
        assert_close(g32[name], g64[name], f"{case.id}: float32 d{name}", rtol, atol_frac=0.1)
