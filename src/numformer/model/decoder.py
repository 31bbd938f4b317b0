"""What GPT and Llama share beyond their formulas: the bookkeeping of the flat buffers (the
parameter count, zeroing the gradients, train and eval, the state dict) and the calls that only
route to the family's own forward_tape or to numformer.model.generate. Each family's formulas
(forward_tape, backward_tape, forward_cached, its KV cache) stay in its own module."""

from __future__ import annotations

from typing import Self

import numpy as np

from numformer.model.generate import generate
from numformer.model.params import LORA_A, check_tensors, family_of
from numformer.model.quantized import QuantizedWeights


class Decoder(QuantizedWeights):
    """The methods GPT and Llama share, written once. A class using it has what QuantizedWeights
    asks for, `forward_tape(idx, targets)` and `backward_tape(tape, dloss, accumulate=)`, and
    `new_kv_cache(batch_size)` and `forward_cached` for numformer.model.generate."""

    def init_adapters(self, seed: int = 0) -> None:
        """LoRA's initialisation: A uniform in ±1/√C_in (as a Linear layer's default), B = 0, so
        an adapted layer starts as the layer it adapts."""
        rng = np.random.default_rng([seed, 3])
        for p in family_of(self.config).adapters(self.config, self.lora.rank, self.lora.targets):   # buffer order
            w = self.adapters[p.name]
            if p.part == LORA_A:
                bound = 1.0 / np.sqrt(w.shape[1])
                w[...] = rng.uniform(-bound, bound, size=w.shape)
            else:
                w[...] = 0.0

    def decay_mask(self) -> np.ndarray:
        """Flat mask, in the layout of `trainable`, of the parameters that get weight decay: those
        with two or more dimensions (matmul weights, embeddings, adapters), not biases or norms'
        gains."""
        return self.trainable.mask(lambda name, shape: len(shape) >= 2)

    def check_input(self, idx, targets=None) -> tuple:
        """(idx as an array, B, T) for forward; ValueError unless idx is (B, T) with T at most
        block_size and targets, when given, has idx's shape."""
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"idx must have shape (B, T), got {idx.shape}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        if targets is not None and np.shape(targets) != (B, T):
            raise ValueError(f"targets shape {np.shape(targets)} does not match idx shape {idx.shape}")
        return idx, B, T

    def num_params(self) -> int:
        """The model's parameters, adapters and quantized weights included."""
        return self.params.size + (self.adapters.size if self.adapters is not None else 0) + self.quantized_params()

    def zero_grad(self) -> None:
        self.grads.flat[...] = 0

    def train(self) -> Self:
        self.training = True
        return self

    def eval(self) -> Self:
        self.training = False
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters by name, and the adapters' A and B when the model has them; the
        quantized weights of a quantized model dequantized (new float32 arrays)."""
        out = dict(self.params.views)
        if self.adapters is not None:
            out.update(self.adapters.views)
        out.update(self.dequantized_weights())
        return out

    def load_state_dict(self, tensors: dict[str, np.ndarray], source: str = "state dict") -> None:
        """Copy tensors into the flat buffers, checking that every name and shape matches."""
        views = self.state_dict()
        check_tensors(tensors, {name: v.shape for name, v in views.items()}, source)
        for name, view in views.items():
            view[...] = tensors[name]

    def forward(self, idx, targets=None):
        """Logits (B, T, V) for token ids idx (B, T); with targets (B, T), also the mean
        cross-entropy loss (targets of -1 are ignored). Keeps what `backward` needs."""
        out, self._tape = self.forward_tape(idx, targets)
        return out

    def backward(self, dloss: float = 1.0, *, accumulate=None) -> None:
        """Add d(loss)/d(parameter) of the last forward(idx, targets) into self.grads. The
        activations are released as they are used, so a second backward needs a new forward."""
        tape, self._tape = self._tape, None     # like PyTorch, the graph is freed by backward
        self.backward_tape(tape, dloss, accumulate=accumulate)

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, rng=None, use_cache: bool = True):
        """Extend idx (B, T) by max_new_tokens sampled tokens; returns (B, T + max_new_tokens).
        temperature 0 is greedy. See numformer.model.generate for the sampling rules."""
        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        rng=rng, use_cache=use_cache)
