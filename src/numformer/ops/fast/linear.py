"""Linear map, the fast version: numformer.ops.linear's formula, signatures and cache, with its
three products made by `matmul`: MKL's gemm where numformer.ops.fast.dispatch gives it the
product (dispatch.linear_gemm), NumPy's matmul otherwise, and the forward bias added inside
the product. A quantized weight (numformer.ops.quant) is read as it is stored, by
numformer.ops.fast.quantized's products."""

import numpy as np

from numformer.ops import linear as reference
from numformer.ops import quant
from numformer.ops.fast import dispatch, mkl, quantized
from numformer.ops.linear import Cache


def matmul(a, b, out=None, bias=None):
    """a @ b (+ bias on every row) for 2-D a (M, K) and b (K, N), into out (M, N) when given.
    MKL's gemm makes it where dispatch.linear_gemm says so and gemm can read the operands as
    they lie (numformer.ops.fast.mkl.product), the bias then added inside the product; else
    np.matmul, and the bias after."""
    gemm = dispatch.linear_gemm(a, b)
    if gemm is not None:
        y = mkl.product(gemm, a, b, out, bias)
        if y is not None:
            return y
    y = np.matmul(a, b, out=out)
    if bias is not None:
        y += bias
    return y


def forward(x, weight, bias=None, keep_input=True, frozen=False):
    """See numformer.ops.linear.forward. Returns (y, cache)."""
    reference.check_shapes(x, weight, bias)
    c_out, c_in = weight.shape
    x2 = x.reshape(-1, c_in)                             # (N, C_in)
    if quant.is_quantized(weight):                       # inference: frozen, read as stored
        y = quantized.matmul(x2, weight, bias).reshape(*x.shape[:-1], c_out)
        return y, Cache(None, weight, bias is not None, x.shape, True)
    y = matmul(x2, weight.T, bias=bias)                  # (N, C_out)
    y = y.reshape(*x.shape[:-1], c_out)
    return y, Cache(x2 if keep_input and not frozen else None, weight, bias is not None, x.shape, frozen)


def backward(dy, cache, x=None):
    """See numformer.ops.linear.backward. Returns (dx, dweight, dbias)."""
    dy2, x2 = reference.backward_operands(dy, cache, x)  # (N, C_out), (N, C_in)
    if quant.is_quantized(cache.weight):
        return quantized.matmul_t(dy2, cache.weight).reshape(cache.x_shape), None, None
    dx = matmul(dy2, cache.weight).reshape(cache.x_shape)   # (..., C_in)
    if cache.frozen:
        return dx, None, None
    dweight = matmul(dy2.T, x2)                          # (C_out, C_in)
    dbias = dy2.sum(axis=0) if cache.has_bias else None
    return dx, dweight, dbias
