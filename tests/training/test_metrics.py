"""Gradient health in metrics.jsonl and loss.png (numformer.training.metrics): the norm before
clipping of every step, which steps were clipped, ‖Δθ‖/‖θ‖ per weight matrix; checked on
fine-tuning runs from a random GPT-2 folder, whose first gradient PyTorch computes too.

The GPT-2 folder is a random GPT2LMHeadModel with a byte-level BPE trained on the corpus, saved as
GPT-2's own folders are: numformer.reference.gpt2_folder (made by tests.helpers.make_finetune_lab).
"""

import json
import struct

import numpy as np
import pytest
import torch

from numformer.model.gpt import GPT
from tests.helpers import FINETUNE as RUN, finetune as train, make_finetune_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_finetune_lab(tmp_path_factory.mktemp("health"))


def test_metrics_hold_the_gradient_norm_and_the_update_ratio(lab):
    train(lab, "health", max_iters=6, eval_interval=3, grad_clip=1.0, plot=True)
    rows = [json.loads(line) for line in (lab / "health" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert rows[0]["grad_norm"] is None and rows[0]["grad_norms"] == [] and rows[0]["update_ratio"] == {}
    assert [s for r in rows for s, _ in r["grad_norms"]] == list(range(6))      # every step, once
    for r in rows[1:]:
        assert r["grad_norm"] == r["grad_norms"][-1][1]
        assert r["clipped"] == (r["grad_norm"] > 1.0)
        assert r["clipped_steps"] == sum(n > 1.0 for _, n in r["grad_norms"])
        weights = {n for n in r["update_ratio"]}
        assert "transformer.h.0.attn.c_attn.weight" in weights and "transformer.wte.weight" in weights
        assert not any(n.endswith((".bias", "ln_1.weight", "ln_f.weight")) for n in weights)
        assert all(0 < v < 1 for v in r["update_ratio"].values())
    # loss.png has the grad-norm panel below the losses: taller than one panel (7 x 4.2 in at 110 dpi)
    png = (lab / "health" / "loss.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert width == 770 and height > 600


def test_the_first_gradient_norm_is_torchs(lab):
    """The norm logged for step 0 is the norm of the gradient PyTorch computes for the same batch."""
    from numformer.data.batches import get_batch
    from numformer.parallel.mpi import SingleProcess
    from numformer.reference.gpt import ReferenceGPT
    from numformer.training import Trainer
    from numformer.training.config import resolve

    train(lab, "norm", max_iters=1, eval_interval=1, grad_clip=0.0)
    rows = [json.loads(line) for line in (lab / "norm" / "metrics.jsonl").read_text().splitlines()]
    logged = rows[1]["grad_norms"][0][1]
    assert rows[1]["clipped"] is False
    cfg, _ = resolve(dict(RUN, data=str(lab / "corpus.txt"), out_dir=str(lab / "norm2"), init_from=str(lab / "gpt2"),
                          max_iters=1))
    assert cfg.model.block_size == 32                              # from the folder's n_positions
    tr = Trainer(cfg, SingleProcess(), cache_dir=lab / "cache")
    x, y = get_batch(tr.train_ids, cfg.model.block_size, cfg.batch_size, np.random.default_rng([cfg.seed, 0]))
    ref = ReferenceGPT.from_config(tr.model.config).double()
    ref.load_numpy({k: v.astype(np.float64) for k, v in GPT.from_hf(lab / "gpt2").state_dict().items()})
    _, loss = ref(torch.from_numpy(x), torch.from_numpy(y))
    loss.backward()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in ref.parameters())).item()
    assert abs(logged - norm) < 1e-4 * norm


def test_lr_zero_means_an_update_ratio_of_zero(lab):
    train(lab, "still", max_iters=3, eval_interval=3, learning_rate=0.0, min_lr=0.0, lora_rank=2)
    row = [json.loads(line) for line in (lab / "still" / "metrics.jsonl").read_text().splitlines()][-1]
    assert set(row["update_ratio"]) == {n for n in GPT.load(lab / "still" / "latest").adapters.shapes}
    assert all(v == 0.0 for v in row["update_ratio"].values() if v is not None)
    assert row["grad_norm"] > 0
