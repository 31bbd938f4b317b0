"""The article's thirteen worked examples, computed live by numformer's own ops; then, after
them and marked as not in the article, worked examples of the formulas today's large models add.

    numformer explain                   all thirteen, in the article's order, then the later four
    numformer explain attention adam    just those
    numformer explain --json            one JSON object per formula

`numformer.explain.examples` re-does each worked example by calling numformer.ops and
numformer.optim, and sets every number the article prints beside the computed one with a verdict:
the two agree (at the precision the article prints), they differ (and by how much), or the article stops
before the result. The later formulas (RoPE, RMSNorm, SwiGLU, grouped-query attention: Llama's,
Mistral's, Qwen2's) have no printed numbers to check; their examples show what each formula does
with numbers small enough to follow by hand. `numformer explain` (numformer.commands.explain)
prints that for people or as JSON.

This module holds only the names, and imports nothing.
"""

# The article's thirteen formulas, in the article's order. These names are the command-line names and
# the "name" field of the JSON output.
NAMES = (
    "linear",
    "positional_encoding",
    "attention",
    "multi_head_attention",
    "residual",
    "layernorm",
    "gelu",
    "softmax",
    "cross_entropy",
    "dropout",
    "backpropagation",
    "gradient_descent",
    "adam",
)

# The formulas after the article: not in it, numbered 14 to 17 after its thirteen.
LATER = (
    "rope",
    "rmsnorm",
    "swiglu",
    "grouped_query_attention",
)

ALL_NAMES = NAMES + LATER

__all__ = ["NAMES", "LATER", "ALL_NAMES"]
