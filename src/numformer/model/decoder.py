"""What GPT and Llama share beyond their formulas: the bookkeeping of the flat buffers (the
parameter count, zeroing the gradients, train and eval, the state dict) and the calls that only
route to the family's own forward_tape or to numformer.model.generate. Each family's formulas
(forward_tape, backward_tape, forward_cached, its KV cache) stay in its own module."""

from __future__ import annotations

from typing import Self

import numpy as np

from numformer.model.generate import generate
from numformer.model.params import check_tensors
from numformer.model.quantized import QuantizedWeights


class Decoder(QuantizedWeights):
    """The methods GPT and Llama share, written once. A class using it has what QuantizedWeights
    asks for, `forward_tape(idx, targets)` and `backward_tape(tape, dloss, accumulate=)`, and
    `new_kv_cache(batch_size)` and `forward_cached` for numformer.model.generate."""

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
