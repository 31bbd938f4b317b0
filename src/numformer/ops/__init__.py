"""The article's formulas as ops: one module per formula, each a pure `forward` / `backward` pair;
and the formulas today's large models add (rope, rmsnorm, swiglu, grouped-query attention in
attention and mha), which the article does not have.

    y, cache = layernorm.forward(x, weight, bias)
    dx, dweight, dbias = layernorm.backward(dy, cache)

`backward` returns the gradient of every differentiable input, in the order of `forward`'s
arguments (a single array when there is one). See each module's docstring for the formula,
its derivation and the shapes.

These are the reference ops, written to be read. numformer.ops.fast holds the same ops with the
same signatures, computed in blocks and chunks for speed; `op_set(name)` gives either.
"""

import sys

from numformer.ops import (attention, cross_entropy, dropout, embedding, gelu, layernorm, linear,
                           lora, mha, positional, quant, residual, rmsnorm, rope, softmax, swiglu)
from numformer.ops import fast

__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear",
           "lora", "mha", "positional", "quant", "residual", "rmsnorm", "rope", "softmax", "swiglu"]


OP_SETS = ("reference", "fast")


def op_set(name: str):
    """The module holding the op set `name`: "reference" (numformer.ops, this package) or "fast"
    (numformer.ops.fast)."""
    if name == "reference":
        return sys.modules[__name__]
    if name == "fast":
        return fast
    raise ValueError(f"op set must be one of {', '.join(OP_SETS)}, got {name!r}")
