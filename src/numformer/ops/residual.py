"""Residual connection (the article's formula 5): y = x + f(x).

Forward
    y = x + fx          x, fx, y all the same shape; fx is the sublayer's output f(x)

Backward (dy = ∂L/∂y). ∂y/∂x = I and ∂y/∂fx = I, so both inputs receive dy unchanged:
    dx  = dy            the skip path
    dfx = dy            the path into the sublayer, whose own backward then adds its dx
The total gradient of x is the sum of the two paths, dx_total = dy + (sublayer backward of dy):
that `+=` happens where the caller accumulates, and it is why residual stacks train deeply.

backward returns the same array object twice; callers accumulate into their own buffers and must
not modify it in place.
"""


def forward(x, fx):
    """y = x + fx. Returns (y, cache)."""
    if x.shape != fx.shape:
        raise ValueError(f"residual: x has shape {x.shape} but fx has shape {fx.shape}")
    return x + fx, x.shape


def backward(dy, cache):
    """Returns (dx, dfx) = (dy, dy): the gradient fans in to both inputs."""
    shape = cache
    if dy.shape != shape:
        raise ValueError(f"residual: dy has shape {dy.shape} but y had shape {shape}")
    dx = dy
    dfx = dy
    return dx, dfx
