"""Multi-head attention, the fast version: numformer.ops.mha with the fast attention for the heads."""

from numformer.ops import mha
from numformer.ops.fast import attention


def forward(x, w_qkv, b_qkv, w_o, b_o, n_head, causal=True, mask=None, dropout_p=0.0, rng=None,
            keep_input=True, keep_probs=True, block=attention.BLOCK, qrows=None):
    """See numformer.ops.mha.forward; `block` and `qrows` go to the fast attention. Returns (y, cache)."""
    return mha.forward_with(attention, x, w_qkv, b_qkv, w_o, b_o, n_head, causal, mask, dropout_p, rng,
                            keep_input, keep_probs, block=block, qrows=qrows)


backward = mha.backward       # the cache names the attention module it was made with
