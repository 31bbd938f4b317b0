"""The Llama with low-rank adapters against PyTorch: the reference Llama with its target layers
wrapped as W x + b + (α/r)·B A x in plain torch (test_lora_gpt.TorchLoRA), base weights frozen.
Targets are named as Hugging Face and PEFT name the layers: q_proj ... down_proj."""

import numpy as np
import pytest
import torch

from numformer import Llama, LlamaConfig
from numformer.errors import UsageError
from numformer.model.adapters import LoRAConfig, merged_state_dict
from numformer.model.params import LLAMA
from numformer.reference.llama import ReferenceLlama
from tests.model.test_lora_gpt import TorchLoRA

CFG = dict(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, n_hidden=24, dropout=0.0)


def pair(targets, rank=3, alpha=5.0, seed=0, ops="fast", attention_bias=True):
    cfg = LlamaConfig(**CFG, attention_bias=attention_bias)
    model = Llama(cfg, dtype=np.float64, seed=seed, ops=ops, lora=LoRAConfig(rank, alpha, targets))
    rng = np.random.default_rng(seed)
    model.params.flat[...] = rng.normal(0, 0.3, size=model.params.size)
    model.adapters.flat[...] = rng.normal(0, 0.3, size=model.adapters.size)   # B not zero: dA is exercised
    ref = ReferenceLlama.from_config(cfg).double()
    ref.load_numpy(dict(model.params.views))
    ref.requires_grad_(False)
    for i, block in enumerate(ref.model.layers):
        for target in model.lora.targets:
            layer = LLAMA.lora_targets[target]                       # "q_proj" -> "self_attn.q_proj"
            parent, child = layer.split(".")
            A = model.adapters[f"model.layers.{i}.{layer}.lora_A"]
            B = model.adapters[f"model.layers.{i}.{layer}.lora_B"]
            setattr(getattr(block, parent), child, TorchLoRA(getattr(getattr(block, parent), child), A, B, alpha))
    return cfg, model, ref


def batch(cfg, B=3, T=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, size=(B, T)), rng.integers(0, cfg.vocab_size, size=(B, T))


@pytest.mark.parametrize("ops", ["reference", "fast"])
@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"), ("down_proj",)])
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
    assert set(model.grads.views) == set(model.adapters.views)            # the adapters and nothing else
    trainable = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    assert {n.replace(".base", "") for n in trainable} == set(model.adapters.views)
    for name, p in trainable.items():
        g = p.grad.numpy()
        np.testing.assert_allclose(model.grads[name], g, rtol=1e-9, atol=1e-12 * np.abs(g).max(), err_msg=name)


def test_fresh_adapters_leave_the_model_unchanged_and_merging_gives_the_same_function():
    cfg = LlamaConfig(**CFG)
    base = Llama(cfg, seed=4)
    adapted = Llama(cfg, seed=4, lora=LoRAConfig(2, 8.0, ("k_proj", "up_proj")))
    adapted.params.flat[...] = base.params.flat
    x, _ = batch(cfg)
    np.testing.assert_array_equal(adapted.forward(x), base.forward(x))   # B = 0 at the start
    adapted.adapters.flat[...] = np.random.default_rng(0).normal(0, 0.5, adapted.adapters.size)
    merged = Llama(cfg, init=False)
    merged.load_state_dict(merged_state_dict(adapted))
    a, m = adapted.forward(x), merged.forward(x)
    assert np.abs(a - base.forward(x)).max() > 1e-2
    np.testing.assert_allclose(m, a, rtol=0, atol=1e-5)


def test_gpt_layer_names_are_refused_for_a_llama_in_one_line():
    with pytest.raises(UsageError, match="'attn.c_attn' is not a layer of a llama model; choose from q_proj") as e:
        Llama(LlamaConfig(**CFG), lora=LoRAConfig(2, 4.0, ("attn.c_attn",)))
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="rank can be at most 8"):     # k_proj maps 16 -> 2·4 = 8
        Llama(LlamaConfig(**CFG), lora=LoRAConfig(9, 4.0, ("k_proj",)))
