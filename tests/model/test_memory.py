"""Memory estimates and the checks that run before anything is allocated: a config is compared with
the tensors a safetensors header lists, and a model or batch bigger than the machine is refused in
one line that gives the estimate."""

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from numformer.errors import CheckpointError, MemoryLimitError
from numformer.model import memory
from numformer.model.config import GPTConfig
from numformer.model.encoder import EncoderConfig
from numformer.model.gpt import GPT
from numformer.model.params import BERT, gpt_param_shapes

HUGE = 1_000_000_000


@pytest.mark.parametrize("kw", [dict(), dict(bias=False), dict(pos_encoding="learned"),
                                dict(n_layer=3, n_embd=48, n_head=6, vocab_size=300, block_size=17,
                                     pos_encoding="learned", bias=False)])
def test_gpt_params_counts_every_parameter(kw):
    cfg = GPTConfig(**kw)
    assert memory.gpt_params(cfg) == sum(math.prod(s) for s in gpt_param_shapes(cfg).values())
    assert memory.gpt_params(cfg) == GPT(cfg, init=False).params.flat.size


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_head=1, tie_embeddings=True), dict(n_kv_head=2, attention_bias=True),
                                dict(n_layer=3, n_embd=48, n_head=6, n_kv_head=3, n_hidden=40, vocab_size=300)])
def test_llama_params_counts_every_parameter(kw):
    from numformer import Llama, LlamaConfig
    from numformer.model.params import LLAMA

    cfg = LlamaConfig(**kw)
    assert memory.llama_params(cfg) == memory.model_params(cfg) == sum(math.prod(s) for s in LLAMA.shapes(cfg).values())
    assert memory.llama_params(cfg) == Llama(cfg, init=False).params.flat.size


def test_encoder_params_counts_every_parameter():
    cfg = EncoderConfig(vocab_size=100, hidden_size=24, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=40, max_position_embeddings=33, type_vocab_size=2)
    assert memory.encoder_params(cfg) == sum(math.prod(s) for s in BERT.shapes(cfg).values())


def test_counting_a_billion_layers_is_instant():
    t0 = time.perf_counter()
    n = memory.gpt_params(GPTConfig(n_layer=HUGE))
    assert n > HUGE * 128 * 128 * 12
    assert time.perf_counter() - t0 < 1.0  # a closed form, not a loop over layers


def test_available_reads_meminfo():
    have = memory.available()
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    kib = int(fields["MemAvailable"].split()[0])
    assert abs(have - kib * 1024) < 256 << 20   # it moves a little between the two reads


def test_refusal_is_one_line_with_the_estimate():
    parts = [("parameters", 3_000_000_000), ("activations", 1_500_000_000)]
    with pytest.raises(MemoryLimitError) as info:
        memory.refuse_if_too_big("training this model", parts, "use a smaller --n_layer", have=2_000_000_000)
    msg = str(info.value)
    assert "\n" not in msg
    assert "needs about 4.5 GB" in msg and "parameters 3.0 GB" in msg and "activations 1.5 GB" in msg
    assert "2.0 GB available" in msg and "--n_layer" in msg
    assert memory.refuse_if_too_big("x", parts, "", have=5_000_000_000) == 4_500_000_000


def test_training_estimate_grows_with_model_and_batch():
    small = sum(n for _, n in memory.training_estimate(GPTConfig(), 12, 4))
    wide = sum(n for _, n in memory.training_estimate(GPTConfig(n_embd=256), 12, 4))
    batch = sum(n for _, n in memory.training_estimate(GPTConfig(), 48, 4))
    parts = dict(memory.training_estimate(GPTConfig(), 12, 4))
    P = GPT(GPTConfig(), init=False).params.flat.size
    assert parts["parameters"] == parts["gradients"] == 4 * P and parts["Adam moments"] == 8 * P
    assert wide > small and batch > small


def test_gradient_accumulation_holds_one_micro_batch_of_activations():
    """Micro-batches run one after another and each frees its activations, so the estimate
    counts the largest one: 48 rows in 4 micro-batches hold what 12 rows do, and 50 rows on 2
    ranks in 4 micro-batches hold 7 (25 rows on a rank, cut 7, 6, 6, 6)."""
    cfg = GPTConfig()

    def acts(*args, **kw):
        return next(n for part, n in memory.training_estimate(cfg, *args, **kw) if part.startswith("activations"))

    assert acts(48, 4, accumulation=4) == acts(12, 4)
    assert acts(50, 4, ranks=2, accumulation=4) == acts(7, 4)
    labels = [part for part, _ in memory.training_estimate(cfg, 48, 4, accumulation=4)]
    assert f"activations for 12×{cfg.block_size} tokens" in labels


def test_a_run_that_fits_through_accumulation_is_not_refused(monkeypatch):
    """The check before training: a batch whose activations do not fit is refused, with advice
    that names --gradient_accumulation_steps, and the same batch in micro-batches is let through."""
    from numformer.training.config import TrainConfig
    from numformer.training.loop import check_memory

    big = TrainConfig.of(batch_size=64, n_layer=2, n_embd=64, n_head=2, block_size=256)
    whole = sum(n for _, n in memory.training_estimate(big.model, 64, 4))
    monkeypatch.setattr(memory, "available", lambda: int(whole * 0.6))
    with pytest.raises(MemoryLimitError, match="--gradient_accumulation_steps"):
        check_memory(big, vocab_size=big.model.vocab_size)
    check_memory(TrainConfig.of(batch_size=64, gradient_accumulation_steps=8, n_layer=2, n_embd=64, n_head=2,
                                block_size=256), vocab_size=big.model.vocab_size)


# ----------------------------------------------------------------------------- checkpoints and files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=11, block_size=16), seed=0)
    model.save(path, tokenizer=None)
    return path


def edited(checkpoint, tmp_path, **model_keys):
    path = tmp_path / "edited"
    shutil.copytree(checkpoint, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"].update(model_keys)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_header_shapes_reads_no_data(checkpoint):
    shapes = memory.header_shapes(checkpoint / "model.safetensors")
    expected = gpt_param_shapes(GPTConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=11, block_size=16))
    assert shapes == expected


@pytest.mark.parametrize("keys", [dict(n_layer=HUGE), dict(n_layer=3), dict(n_embd=64)])
def test_config_that_does_not_describe_the_weights_is_refused_before_loading(checkpoint, tmp_path, monkeypatch, keys):
    from numformer import checkpoint as checkpoint_module

    path = edited(checkpoint, tmp_path, **keys)
    monkeypatch.setattr(GPT, "__init__", lambda *a, **k: pytest.fail("allocated a model"))
    monkeypatch.setattr(checkpoint_module, "_read_tensors", lambda *a: pytest.fail("read the weights"))
    with pytest.raises(CheckpointError) as info:
        GPT.load(path)
    msg = str(info.value)
    held = sum(math.prod(s) for s in gpt_param_shapes(GPTConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=11,
                                                                block_size=16)).values())
    assert "\n" not in msg and f"holds {held:,};" in msg
    assert f"n_layer {keys.get('n_layer', 2)}" in msg and "shapes in the config do not match the weights" in msg


def test_weights_bigger_than_the_machine_are_refused(checkpoint, monkeypatch):
    from numformer import checkpoint as checkpoint_module

    monkeypatch.setattr(memory, "available", lambda: 1000)
    monkeypatch.setattr(checkpoint_module, "_read_tensors", lambda *a: pytest.fail("read the weights"))
    with pytest.raises(MemoryLimitError, match=r"loading this model needs about .* kB of memory \(the file .* kB, weights .* kB\) but this machine has 1.0 kB available"):
        GPT.load(checkpoint)


# ----------------------------------------------------------------------------- the commands


def _cap_memory():
    """In the child: 4 GiB of address space, so code that would allocate for a huge config fails
    with MemoryError instead of taking the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def cli(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "numformer", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "NUMFORMER_CACHE": str(tmp_path / "cache")},
                          preexec_fn=_cap_memory)


def one_error_line(r, command):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"numformer {command}: error: "), r.stderr[-2000:]
    return lines[0]


def test_sample_refuses_a_billion_layers(checkpoint, tmp_path):
    path = edited(checkpoint, tmp_path, n_layer=HUGE)
    line = one_error_line(cli(["sample", "--out_dir", str(path), "--max_new_tokens", "3"], tmp_path), "sample")
    assert f"n_layer {HUGE}" in line and "shapes in the config do not match the weights" in line


@pytest.mark.parametrize("flags", [["--batch_size", str(HUGE)], ["--n_embd", "1048576"], ["--n_layer", str(HUGE)]])
def test_train_refuses_a_model_or_batch_bigger_than_the_machine(tmp_path, flags):
    line = one_error_line(cli(["train", *flags, "--max_iters", "1", "--out_dir", "out"], tmp_path), "train")
    assert "training this model needs about" in line and "available" in line and "Adam moments" in line
    assert not (tmp_path / "cache").exists()  # refused before the corpus was read


def test_convert_from_hf_refuses_a_billion_layers(tmp_path):
    import transformers

    hf = tmp_path / "hf"
    cfg = transformers.GPT2Config(vocab_size=13, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(hf, safe_serialization=True)
    config = json.loads((hf / "config.json").read_text())
    config["n_layer"] = HUGE
    (hf / "config.json").write_text(json.dumps(config))
    line = one_error_line(cli(["convert", "--from-hf", str(hf), "--out", "out"], tmp_path), "convert")
    assert f"n_layer is {HUGE:,} but" in line and "model.safetensors holds the weights of 1 block;" in line
    assert not (tmp_path / "out").exists()


def test_embed_refuses_a_billion_bert_layers(tmp_path):
    from numformer.sentence import default_model_dir

    source = default_model_dir()   # the test extra installs it
    model = tmp_path / "model"
    shutil.copytree(source, model)
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = HUGE
    (model / "config.json").write_text(json.dumps(config))
    line = one_error_line(cli(["embed", "--model", str(model), "hello"], tmp_path), "embed")
    assert f"num_hidden_layers is {HUGE:,} but" in line and "model.safetensors holds the weights of 6 blocks" in line
