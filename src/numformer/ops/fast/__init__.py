"""The fast op set: the same ops, signatures and cache contracts as numformer.ops, computed for
speed and memory. Where an op has nothing to gain, the reference module is used as it is.

    from numformer.ops import fast
    y, cache = fast.attention.forward(q, k, v, causal=True, keep_probs=False)

- attention: cache-sized score blocks, causal query chunks that skip masked keys, and
  keep_probs=False (P recomputed in backward, bit for bit);
- gelu: a float32 gate as PyTorch computes it, an accurate float64 gate, cache-sized slices;
- linear: its products by MKL's gemm (numformer.ops.fast.mkl) where that pays (measured once per
  machine by numformer.ops.fast.blas_choice), the bias added inside the forward product; a
  quantized weight (numformer.ops.quant) read as it is stored (numformer.ops.fast.quantized);
- layernorm, rmsnorm: one compiled pass per row for forward and one for backward (float32);
- swiglu: one compiled pass for forward and one for backward (float32);
- rope: its cos and sin tables kept per head size, the halves rotated in place;
- mha: multi-head attention over the fast attention and the fast rope, its backward able to write
  dq, dk and dv into one (B, T, 3C) buffer;
- cross_entropy: the exponentials and probabilities made in place, one (N, V) array instead of
  three.

numformer.ops.fast.dispatch decides, once, which implementation each of them runs (NumPy, the
compiled float32 kernels of numformer.ops.fast.kernels with the optional numba, or MKL's gemm
with the optional mkl wheel) and reports it; NUMFORMER_JIT=0 and NUMFORMER_BLAS=numpy switch
the optional ones off, NUMFORMER_BLAS=mkl uses MKL whether or not it measured faster.

The block and chunk sizes are parameters of forward (`block`, `qrows`, `chunk`) with module
defaults; tests hold every fast op equal to its reference across those boundaries.
"""

from numformer.ops import dropout, embedding, lora, positional, quant, residual, softmax
from numformer.ops.fast import attention, cross_entropy, gelu, layernorm, linear, mha, rmsnorm, rope, swiglu

__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear",
           "lora", "mha", "positional", "quant", "residual", "rmsnorm", "rope", "softmax", "swiglu"]
