"""TOML config files that used to end in a traceback: each is refused in one line naming the file."""

import os

import pytest

from numformer.errors import UsageError
from numformer.training.config import load_toml
from tests.helpers import DEEP, one_line


@pytest.mark.parametrize("text", ["a = " + "[" * DEEP + "]" * DEEP, "a = " + "{x=" * 5000 + "1" + "}" * 5000])
def test_toml_nested_too_deeply_is_a_usage_error(text, tmp_path):
    file = tmp_path / "deep.toml"
    file.write_text(text + "\n")
    with pytest.raises(UsageError) as e:
        load_toml(str(file))
    assert "nested too deeply" in one_line(e)


def test_bias_false_as_text_in_a_toml_file_is_refused(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('bias = "false"\n')
    with pytest.raises(UsageError) as e:
        load_toml(str(file))
    assert "bias must be bool" in one_line(e)


@pytest.mark.parametrize("make, words", [(os.mkfifo, "a FIFO"),
                                         (lambda f: os.symlink("/dev/zero", f), "a character device")],
                         ids=["fifo", "dev-zero"])
def test_a_toml_config_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path, deadline, make, words):
    file = tmp_path / "c.toml"
    make(file)
    deadline(20)
    with pytest.raises(UsageError) as e:
        load_toml(str(file))
    assert one_line(e).startswith(f"{file}: cannot be read: it is {words}")
