"""Linear map, the fast version: numformer.ops.linear's formula, signatures and cache, with its
three products made by numformer.ops.fast.blas (MKL's gemm where it is installed and BLAS runs
on one thread, else NumPy's matmul) and the bias added inside the forward product (gemm's
C = A·B + 1·C on y filled with b, which saves a pass over y)."""

from numformer.ops import linear as reference
from numformer.ops.fast import blas


def forward(x, weight, bias=None, keep_input=True, frozen=False):
    """See numformer.ops.linear.forward. Returns (y, cache)."""
    reference.check_shapes(x, weight, bias)
    c_out, c_in = weight.shape
    x2 = x.reshape(-1, c_in)                             # (N, C_in)
    y = blas.matmul(x2, weight.T, bias=bias)             # (N, C_out)
    y = y.reshape(*x.shape[:-1], c_out)
    return y, (x2 if keep_input and not frozen else None, weight, bias is not None, x.shape, frozen)


def backward(dy, cache, x=None):
    """See numformer.ops.linear.backward. Returns (dx, dweight, dbias)."""
    _, weight, has_bias, x_shape, frozen = cache
    dy2, x2 = reference.backward_operands(dy, cache, x)  # (N, C_out), (N, C_in)
    dx = blas.matmul(dy2, weight).reshape(x_shape)       # (..., C_in)
    if frozen:
        return dx, None, None
    dweight = blas.matmul(dy2.T, x2)                     # (C_out, C_in)
    dbias = dy2.sum(axis=0) if has_bias else None
    return dx, dweight, dbias
