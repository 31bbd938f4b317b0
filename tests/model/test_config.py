"""GPTConfig's checks, and who reports them: a bad value raises a ValueError (InvalidConfig)
that names the key; a flag's caller turns it into a UsageError (exit 2), a checkpoint's caller
into a CheckpointError naming <checkpoint>/config.json (exit 1)."""

import json

import pytest

from numformer.cli import main as cli_main
from numformer.data.tokenizer import CharTokenizer
from numformer.errors import NumformerError
from numformer.model.config import GPTConfig, InvalidConfig
from numformer.model.gpt import GPT
from tests.helpers import one_line

SMALL = dict(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)

# a hand edit of a checkpoint's "model" section -> the key the error must name
BAD = [
    ("n_layer", -1), ("n_layer", "1"), ("n_layer", 1.0), ("n_layer", True), ("n_embd", 0), ("n_head", 3),
    ("vocab_size", None), ("block_size", [16]), ("bias", "false"), ("bias", 1), ("dropout", "0.5"),
    ("dropout", True), ("dropout", 1.0), ("dropout", -0.1), ("layer_norm_eps", "1e-5"), ("layer_norm_eps", 0),
    ("pos_encoding", "rope"), ("pos_encoding", ["learned"]), ("sinusoidal_form", 1), ("gelu", None),
    ("colour", "blue"),
]


@pytest.mark.parametrize("key, value", BAD)
def test_a_bad_value_is_a_value_error_naming_the_key(key, value):
    with pytest.raises(InvalidConfig) as e:
        GPTConfig.from_dict({**SMALL, key: value})
    assert isinstance(e.value, ValueError) and not isinstance(e.value, NumformerError)
    message = str(e.value)
    assert "\n" not in message and key in message, message
    assert e.value.key in (key, "n_embd")           # n_head 3 breaks n_embd % n_head


@pytest.mark.parametrize("d", [SMALL, {**SMALL, "dropout": 0, "layer_norm_eps": 1}, {**SMALL, "dropout": 0.25}])
def test_good_values_pass_unchanged(d):
    assert GPTConfig.from_dict(d).to_dict() == {**GPTConfig().to_dict(), **d}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "ckpt"
    GPT(GPTConfig(**SMALL), seed=0).save(path, tokenizer=CharTokenizer.from_text("abcde").to_json())
    return path


def hand_edited(checkpoint, tmp_path, key, value):
    """A copy of the checkpoint with one key of its model section changed, as a checkpoint
    written before config.json carried its own digest (so the digest cannot catch it)."""
    import shutil

    path = tmp_path / "edited"
    shutil.copytree(checkpoint, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["_numformer"].pop("config_sha256", None)
    cfg["model"][key] = value
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("key, value", BAD)
@pytest.mark.parametrize("command", ["sample", "convert"])
def test_a_hand_edited_checkpoint_config_is_a_checkpoint_error_naming_the_file(checkpoint, tmp_path, capsys,
                                                                               command, key, value):
    path = hand_edited(checkpoint, tmp_path, key, value)
    argv = (["sample", "--out_dir", str(path), "--max_new_tokens", "2"] if command == "sample"
            else ["convert", "--to_hf", str(path), "--out", str(tmp_path / "hf")])
    capsys.readouterr()
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert "\n" not in err and f"{path / 'config.json'}: " in err and key in err, err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("argv, key", [
    (["train", "--n_head", "3", "--max_iters", "1"], "n_head"),
    (["train", "--n_layer", "0", "--max_iters", "1"], "n_layer"),
    (["train", "--dropout", "1.5", "--max_iters", "1"], "dropout"),
    (["bench", "--n_head", "3", "--iters", "1"], "n_head"),
    (["bench", "--n_layer", "0", "--iters", "1"], "n_layer"),
])
def test_a_bad_flag_is_still_a_usage_error(tmp_path, capsys, argv, key):
    capsys.readouterr()
    code = cli_main([*argv, *(["--out_dir", str(tmp_path / "o")] if argv[0] == "train" else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and key in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("section, key, value", [("model", "n_head", 3), ("model", "vocab_size", "5"),
                                                 ("train", "n_layer", -1), ("train", "dropout", 2.0)])
def test_resuming_a_checkpoint_with_a_bad_model_config_names_its_config_json(tmp_path, section, key, value):
    import numpy as np

    from numformer.checkpoint import save_checkpoint
    from numformer.errors import CheckpointError
    from numformer.training.config import resolve

    model, flat = dict(SMALL), {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 8}
    (model if section == "model" else flat)[key] = value
    save_checkpoint(tmp_path / "latest", model={"w": np.zeros(2, np.float32)}, tokenizer="null",
                    config={"model": model, "train": {"config": flat}})
    with pytest.raises(CheckpointError) as e:
        resolve({"out_dir": str(tmp_path)}, resume=True)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'latest' / 'config.json'}: ") and key in message, message


@pytest.mark.parametrize("bias", ["false", "true", 0, 1, None])
def test_bias_must_be_a_boolean_in_a_model_config(bias):
    with pytest.raises(InvalidConfig) as e:     # its caller names the flag or the file
        GPTConfig.from_dict({"bias": bias})
    assert "bias must be true or false" in one_line(e)


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), 0.0])
def test_layer_norm_eps_must_be_positive_and_finite(eps):
    with pytest.raises(InvalidConfig):
        GPTConfig(layer_norm_eps=eps)
