"""The GPT with low-rank adapters against PyTorch: the reference GPT with its target layers
wrapped as W x + b + (α/r)·B A x in plain torch, base weights frozen (requires_grad False)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from numformer import GPT, GPTConfig
from numformer.errors import UsageError
from numformer.model.adapters import LoRAConfig, merged_state_dict
from numformer.reference.gpt import ReferenceGPT

CFG = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=12, dropout=0.0, pos_encoding="learned")


class TorchLoRA(nn.Module):
    def __init__(self, base: nn.Linear, A, B, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / A.shape[0]
        self.lora_A = nn.Parameter(torch.from_numpy(A.copy()))
        self.lora_B = nn.Parameter(torch.from_numpy(B.copy()))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.lora_A.T) @ self.lora_B.T


def pair(targets, rank=3, alpha=5.0, seed=0, ops="fast", bias=True):
    cfg = GPTConfig(**CFG, bias=bias)
    model = GPT(cfg, dtype=np.float64, seed=seed, ops=ops, lora=LoRAConfig(rank, alpha, targets))
    rng = np.random.default_rng(seed)
    model.params.flat[...] = rng.normal(0, 0.3, size=model.params.size)
    model.adapters.flat[...] = rng.normal(0, 0.3, size=model.adapters.size)   # B not zero: dA is exercised
    ref = ReferenceGPT.from_config(cfg).double()
    ref.load_numpy(dict(model.params.views))
    ref.requires_grad_(False)
    for i, block in enumerate(ref.transformer.h):
        for layer in model.lora.targets:
            parent, child = layer.split(".")
            A = model.adapters[f"transformer.h.{i}.{layer}.lora_A"]
            B = model.adapters[f"transformer.h.{i}.{layer}.lora_B"]
            setattr(getattr(block, parent), child, TorchLoRA(getattr(getattr(block, parent), child), A, B, alpha))
    return cfg, model, ref


def batch(cfg, B=3, T=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, size=(B, T)), rng.integers(0, cfg.vocab_size, size=(B, T))


@pytest.mark.parametrize("ops", ["reference", "fast"])
@pytest.mark.parametrize("targets", [("attn.c_attn", "attn.c_proj"), ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
                                     ("mlp.c_fc",)])
def test_logits_loss_and_adapter_gradients_match_pytorch(targets, ops):
    cfg, model, ref = pair(targets, ops=ops)
    x, y = batch(cfg)
    logits, loss = model.forward(x, y)
    model.zero_grad()
    model.backward()
    tlogits, tloss = ref(torch.from_numpy(x), torch.from_numpy(y))
    tloss.backward()
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert abs(loss - tloss.item()) < 1e-10 * tloss.item()
    # the gradient buffer holds the adapters and nothing else
    assert set(model.grads.views) == set(model.adapters.views)
    trainable = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    assert {n.replace(".base", "") for n in trainable} == set(model.adapters.views)
    for name, p in trainable.items():
        g = p.grad.numpy()
        np.testing.assert_allclose(model.grads[name], g, rtol=1e-9, atol=1e-12 * np.abs(g).max(), err_msg=name)


def test_fresh_adapters_leave_the_model_unchanged_and_merging_gives_the_same_function():
    cfg = GPTConfig(**CFG)
    base = GPT(cfg, seed=4)
    adapted = GPT(cfg, seed=4, lora=LoRAConfig(2, 8.0, ("attn.c_attn", "mlp.c_fc")))
    adapted.params.flat[...] = base.params.flat
    x, _ = batch(cfg)
    np.testing.assert_array_equal(adapted.forward(x), base.forward(x))   # B = 0 at the start
    adapted.adapters.flat[...] = np.random.default_rng(0).normal(0, 0.5, adapted.adapters.size)
    merged = GPT(cfg, init=False)
    merged.load_state_dict(merged_state_dict(adapted))
    a, m = adapted.forward(x), merged.forward(x)
    assert np.abs(a - base.forward(x)).max() > 1e-2            # the adapters do change the function
    np.testing.assert_allclose(m, a, rtol=0, atol=1e-5)


def test_lora_memory_falls_with_the_rank():
    cfg = GPTConfig(**{**CFG, "n_embd": 32})
    full = GPT(cfg)
    sizes = [GPT(cfg, lora=LoRAConfig(r, 2.0 * r)).grads.flat.size for r in (1, 2, 4, 8)]
    assert sizes == sorted(sizes) and sizes[-1] < full.grads.flat.size
    assert sizes[0] == cfg.n_layer * ((32 + 96) + (32 + 32))     # A (1, C) + B (3C, 1), A (1, C) + B (C, 1)


@pytest.mark.parametrize("rank, message", [(0, "positive integer"), (33, "at most 32"), (-1, "positive integer")])
def test_bad_ranks_are_refused_in_one_line(rank, message):
    cfg = GPTConfig(**{**CFG, "n_embd": 32})
    with pytest.raises(UsageError, match=message) as e:
        GPT(cfg, lora=LoRAConfig(rank, 4.0))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("targets, message", [(("attn.c_attn", "c_proj"), "unknown layer 'c_proj'"), ((), "empty"),
                                              (("mlp.c_fc", "mlp.c_fc"), "twice")])
def test_bad_targets_are_refused(targets, message):
    with pytest.raises(UsageError, match=message):
        LoRAConfig(2, 4.0, targets)
