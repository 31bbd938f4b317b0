"""The TOML files of examples/ (the README's tour trains with them): each goes through the real
path of `numformer train FILE` (the command's parser, given_settings, resolve and its validation)
and gives a run whose settings are the file's, and the commands its header shows name the file."""

import re
import tomllib
from pathlib import Path

import pytest

from numformer.cli import command_parser
from numformer.commands.train import given_settings
from numformer.errors import UsageError
from numformer.training.config import TrainConfig, resolve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def test_there_are_examples_and_the_readme_trains_with_one():
    assert {"shakespeare-char.toml", "llama-small.toml"} <= {p.name for p in EXAMPLES}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^numformer train \$NF/examples/[\w-]+\.toml ", readme, re.M)


def config_of(argv):
    return resolve(given_settings(command_parser("train").parse_args(argv)))[0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_resolves_to_the_run_it_writes_down(path):
    written = tomllib.loads(path.read_text(encoding="utf-8"))
    cfg = config_of([str(path)])
    flat = cfg.to_flat()
    for key, value in written.items():           # every key the file sets is the run's
        assert flat[key] == value, key
    assert cfg.out_dir != TrainConfig().out_dir, "an example writes to a folder of its own, not out/"
    # flags override the file, as the header says
    assert config_of([str(path), "--max_iters", "7", "--data", "mine.txt"]).max_iters == 7
    header = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any(re.search(rf"numformer train examples/{re.escape(path.name)}\b", line) for line in header)


def test_the_two_examples_are_the_two_families():
    archs = {p.name: config_of([str(p)]).arch for p in EXAMPLES}
    assert archs["shakespeare-char.toml"] == "gpt2" and archs["llama-small.toml"] == "llama"
    llama = config_of([str(ROOT / "examples" / "llama-small.toml")]).model
    assert (llama.n_head, llama.n_kv_head, llama.n_hidden) == (4, 2, 384)


def test_a_key_of_the_other_family_in_an_example_is_refused(tmp_path):
    """What the loader does with an edited example: a GPT key in the Llama's file is one line."""
    bad = tmp_path / "edited.toml"
    bad.write_text((ROOT / "examples" / "llama-small.toml").read_text(encoding="utf-8") + 'gelu = "exact"\n')
    with pytest.raises(UsageError, match="applies to --arch gpt2"):
        config_of([str(bad)])
