"""What a new user trips over, following the README top to bottom (issue 15's list, 1-10). The
items of training (2, 3, 8 and train's part of 1 and 10) are in tests/training/test_loop.py and
test_session.py, the mpi4py hint (7) in tests/parallel/test_mpi.py."""

from pathlib import Path

import pytest

from numformer import cli
from tests.helpers import blas_after, run_numformer as numformer, make_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("newuser"))



# ---------------------------------------------------------------------- 1. BLAS threads



@pytest.mark.parametrize("env, want", [({}, "BLAS 1 0"), ({"OPENBLAS_NUM_THREADS": "3"}, "BLAS 3 0")])
def test_sample_gives_blas_one_thread_unless_told(lab, tmp_path, env, want):
    assert blas_after(["sample", "--out_dir", lab / "run", "--max_new_tokens", "3"], tmp_path, env) == want


# ---------------------------------------------------------------------- 6. flag spellings


def _every_flag():
    for name in cli.COMMANDS:
        parser = cli.command_parser(name)
        for action in parser._actions:
            for opt in action.option_strings:
                if opt.startswith("--"):
                    yield name, parser, opt, action


def test_every_flag_is_listed_in_its_underscore_spelling_and_read_in_both():
    n = 0
    for name, parser, opt, action in _every_flag():
        assert "-" not in opt[2:], (name, opt)                # one documented spelling
        hyphen = "--" + opt[2:].replace("_", "-")
        assert parser._option_string_actions[cli.underscored(hyphen)] is action, (name, hyphen)
        n += "_" in opt
    assert n > 40, n


@pytest.mark.parametrize("argv, want", [
    (["--batch-size", "3", "--from-hf=a-b", "--", "--x-y"], ["--batch_size", "3", "--from_hf=a-b", "--", "--x-y"]),
    (["-h", "--no-torch", "some-text"], ["-h", "--no_torch", "some-text"]),
])
def test_normalise_flags(argv, want):
    assert cli.normalise_flags(argv) == want


def test_both_spellings_run(lab, tmp_path):
    for spelling in (["--max_new_tokens", "2", "--out_dir"], ["--max-new-tokens", "2", "--out-dir"]):
        r = numformer(["sample", *spelling, lab / "run", "--temperature", "0"], tmp_path)
        assert r.returncode == 0, r.stderr
    r = numformer(["check", "--no-torch", "--help"], tmp_path)
    assert r.returncode == 0 and "--no_torch" in r.stdout and "--no-torch" not in r.stdout
    r = numformer(["convert", "--help"], tmp_path)
    assert "--from_hf" in r.stdout and "--from-hf" not in r.stdout


# ---------------------------------------------------------------------- 9. explain


def test_explain_accepts_numbers_and_says_what_the_article_is(tmp_path):
    by_number = numformer(["explain", "3", "12"], tmp_path)
    by_name = numformer(["explain", "attention", "gradient_descent"], tmp_path)
    assert by_number.returncode == 0 and by_number.stdout == by_name.stdout
    first = by_number.stdout.splitlines()[0]
    assert first.startswith("The article:") and "Chinese" in first and "13 formulas" in first
    assert "seed" not in by_number.stdout.lower()
    for bad in ("0", "18"):                # 1-13 the article's, 14-17 the formulas after it
        r = numformer(["explain", bad], tmp_path)
        assert r.returncode == 2 and "number 1-17" in r.stderr


def test_no_seed_wording_left_in_explain():
    import numformer.commands.explain as cmd
    import numformer.explain as pkg

    for file in [Path(cmd.__file__), *Path(pkg.__file__).parent.glob("*.py")]:
        text = file.read_text(encoding="utf-8")
        for phrase in ("seed document", "the seed's", "The seed's", "the seed ", "The seed "):
            assert phrase not in text, (file.name, phrase)


# ---------------------------------------------------------------------- 10. small things


def test_bare_numformer_is_a_usage_error(tmp_path):
    r = numformer([], tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "usage: numformer" in r.stderr


def test_bench_never_prints_a_question_mark_for_blas_threads(tmp_path, monkeypatch, capsys):
    import numformer.perf as perf

    real = perf.blas_info
    monkeypatch.setattr(perf, "blas_info", lambda: {**real(), "blas_threads": None, "blas": None})
    assert cli.main(["bench", "--n_layer", "1", "--n_head", "1", "--n_embd", "8", "--block_size", "8",
                     "--batch_size", "2", "--iters", "1", "--warmup", "0", "--no_floor", "--gemm_n", "0"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "machine" in line)
    assert "?" not in line and ("BLAS threads" in line), line


