"""Threads over a batch (numformer.parallel.threads): the threaded step computes the one-thread
gradient, PyTorch's, bit for bit whatever the thread timing, with dropout decided by the model's
generator, bad input refused before any gradient is touched, and a failing shard that wakes the
others. Moved from tests/model; the models and batches are those of tests/model/test_gpt.py and
test_lora_gpt.py."""

import numpy as np
import pytest
import torch

from numformer.parallel.threads import loss_and_grad
from tests.model import test_lora_gpt as lora
from tests.model.test_gpt import batch, pair, rel_err


@pytest.mark.parametrize("B,threads", [(4, 2), (3, 2), (5, 3)])
def test_threaded_loss_and_grad_equals_one_thread(B, threads):
    """Splitting the batch over threads changes only the float summation order."""
    cfg, model, ref = pair("sinusoidal", seed=9)
    x, y = batch(cfg, B=B, seed=2, ignore=True)
    model.zero_grad()
    one = loss_and_grad(model, x, y, threads=1)
    g1 = model.grads.flat.copy()
    model.zero_grad()
    many = loss_and_grad(model, x, y, threads=threads)
    assert abs(many - one) < 1e-12 * abs(one)
    np.testing.assert_allclose(model.grads.flat, g1, rtol=1e-10, atol=1e-13)
    # and both equal PyTorch's gradient of the same loss
    _, tloss = ref(torch.from_numpy(x), torch.from_numpy(y))
    tloss.backward()
    for n, p in ref.named_parameters():
        assert rel_err(model.grads[n], p.grad.numpy()) < 1e-9, n


def test_threaded_dropout_is_decided_by_the_model_rng_state():
    cfg, model, _ = pair("learned", seed=4, dropout=0.2)
    model.train()
    x, y = batch(cfg, B=4, seed=3)
    state = model.rng.bit_generator.state
    model.zero_grad()
    a = loss_and_grad(model, x, y, threads=2)
    ga = model.grads.flat.copy()
    model.rng.bit_generator.state = state
    model.zero_grad()
    b = loss_and_grad(model, x, y, threads=2)
    assert a == b and np.array_equal(model.grads.flat, ga)
    model.eval()
    assert model.forward(x, y)[1] != a      # the masks really dropped something


def test_threaded_loss_and_grad_adds_to_existing_gradients():
    """loss_and_grad adds into model.grads, also the shard that writes there directly: two calls
    without zero_grad give twice the gradient, as two single-thread calls do."""
    cfg, model, _ = pair("sinusoidal", seed=9)
    x, y = batch(cfg, B=4, seed=2)
    model.zero_grad()
    loss_and_grad(model, x, y, threads=1)
    loss_and_grad(model, x, y, threads=1)
    twice = model.grads.flat.copy()
    model.zero_grad()
    loss_and_grad(model, x, y, threads=2)
    loss_and_grad(model, x, y, threads=2)
    np.testing.assert_allclose(model.grads.flat, twice, rtol=1e-10, atol=1e-13)


def test_threaded_step_with_a_bad_id_in_a_later_shard_leaves_gradients_untouched():
    cfg, model, _ = pair("sinusoidal", seed=9)
    x, y = batch(cfg, B=4, seed=2)
    model.zero_grad()
    loss_and_grad(model, x, y, threads=2)
    before = model.grads.flat.copy()
    x[3, 0] = cfg.vocab_size                    # only the second shard sees it
    with pytest.raises(ValueError, match="ids must lie in"):
        loss_and_grad(model, x, y, threads=2)
    np.testing.assert_array_equal(model.grads.flat, before)


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_gradient_does_not_depend_on_thread_timing(threads, monkeypatch):
    """Every shard adds into the one gradient buffer, each parameter's adds in shard order: random
    delays before each add reorder the threads but must not change a bit of the result."""
    import random
    import time

    import numformer.parallel.threads as threads_module

    cfg, model, _ = pair("learned", seed=5)
    x, y = batch(cfg, B=6, seed=1)
    model.zero_grad()
    loss_and_grad(model, x, y, threads=threads)
    calm = model.grads.flat.copy()

    original = threads_module.ShardAdds.add
    delays = random.Random(0)

    def jittery(self, r, name, value, index):
        time.sleep(delays.random() * 0.002)
        original(self, r, name, value, index)

    monkeypatch.setattr(threads_module.ShardAdds, "add", jittery)
    for _ in range(3):
        model.zero_grad()
        loss_and_grad(model, x, y, threads=threads)
        np.testing.assert_array_equal(model.grads.flat, calm)


def test_a_shard_that_fails_in_backward_raises_instead_of_hanging(monkeypatch):
    """A shard waits for the other's share of each parameter; if the other dies, the waiting one
    must be woken and the step must raise. Here the shard whose backward starts second dies."""
    import threading

    import numformer.model.gpt as gpt_module

    cfg, model, _ = pair("sinusoidal", seed=5)
    x, y = batch(cfg, B=4, seed=1)
    original = gpt_module.GPT.backward_tape
    started = []
    lock = threading.Lock()

    def broken(self, tape, dloss=1.0, **kw):
        with lock:
            started.append(tape)
            second = len(started) == 2
        if second:
            raise ArithmeticError("a shard broke")
        original(self, tape, dloss, **kw)

    monkeypatch.setattr(gpt_module.GPT, "backward_tape", broken)
    outcome = []

    def step():
        try:
            loss_and_grad(model, x, y, threads=2)
        except Exception as e:       # noqa: BLE001 (recorded for the assertion below)
            outcome.append(e)

    t = threading.Thread(target=step, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the threaded step hung"
    assert len(outcome) == 1 and isinstance(outcome[0], (ArithmeticError, RuntimeError))


def test_threads_give_the_same_adapter_gradients():
    cfg, model, _ = lora.pair(("attn.c_attn", "mlp.c_proj"))
    x, y = lora.batch(cfg, B=4)
    model.zero_grad()
    loss1 = loss_and_grad(model, x, y, threads=1)
    g1 = model.grads.flat.copy()
    model.zero_grad()
    loss2 = loss_and_grad(model, x, y, threads=3)
    assert abs(loss1 - loss2) < 1e-12
    np.testing.assert_allclose(model.grads.flat, g1, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["mqa", "gqa2-bias-tied"])
@pytest.mark.parametrize("B,threads", [(4, 2), (5, 3)])
def test_threaded_llama_equals_one_thread_and_pytorch(name, B, threads):
    """The Llama through the same threaded step: the one-thread gradient (the tied head's two
    shares added in shard order) and PyTorch's."""
    from tests.model import test_llama as llama

    cfg, model, ref = llama.pair(name, seed=9)
    x, y = llama.batch(cfg, B=B, seed=2, ignore=True)
    model.zero_grad()
    one = loss_and_grad(model, x, y, threads=1)
    g1 = model.grads.flat.copy()
    model.zero_grad()
    many = loss_and_grad(model, x, y, threads=threads)
    assert abs(many - one) < 1e-12 * abs(one)
    np.testing.assert_allclose(model.grads.flat, g1, rtol=1e-10, atol=1e-13)
    _, tloss = ref(torch.from_numpy(x), torch.from_numpy(y))
    tloss.backward()
    for n, p in ref.named_parameters():
        assert rel_err(model.grads[n], p.grad.numpy()) < 1e-9, n


def test_threaded_llama_dropout_is_decided_by_the_model_rng_state():
    from tests.model import test_llama as llama

    cfg, model, _ = llama.pair("gqa2-tied", seed=4, dropout=0.2)
    model.train()
    x, y = llama.batch(cfg, B=4, seed=3)
    state = model.rng.bit_generator.state
    model.zero_grad()
    a = loss_and_grad(model, x, y, threads=2)
    ga = model.grads.flat.copy()
    model.rng.bit_generator.state = state
    model.zero_grad()
    b = loss_and_grad(model, x, y, threads=2)
    assert a == b and np.array_equal(model.grads.flat, ga)
    model.eval()
    assert model.forward(x, y)[1] != a      # the masks really dropped something
