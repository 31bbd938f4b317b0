"""The seed's formulas as ops: one module per formula, each a pure `forward` / `backward` pair.

    y, cache = layernorm.forward(x, weight, bias)
    dx, dweight, dbias = layernorm.backward(dy, cache)

`backward` returns the gradient of every differentiable input, in the order of `forward`'s
arguments (a single array when there is one). See each module's docstring for the formula,
its derivation and the shapes.
"""

from numformer.ops import (attention, cross_entropy, dropout, embedding, gelu, layernorm, linear,
                           mha, positional, residual, softmax)

__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear",
           "mha", "positional", "residual", "softmax"]
