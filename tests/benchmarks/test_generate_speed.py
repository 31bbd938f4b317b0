"""benchmarks/generate_speed.py: its helpers, the llama.cpp peer's model preparation and the skip
line when llama-cpp-python is absent. Speeds are never asserted (they are measured, not tested)."""

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import generate_speed as gs  # noqa: E402

TINY = "tiny:n_layer=1,n_head=2,n_embd=32,block_size=64,vocab_size=65"


def _batch(prefill, decode, tokens_per_sec, tokens=((1, 2, 3),)):
    return {"prefill_seconds": prefill, "decode_seconds": decode, "decode_seconds_min": decode / 2,
            "seconds": prefill + decode, "runs": 1,
            "decode_tokens_per_sec": tokens_per_sec, "ms_per_token": 1000 * decode / 3,
            "tokens": [list(t) for t in tokens], "logits": [[0.0]]}


def test_merge_rounds_takes_the_median_decoding_time_per_case():
    rounds = [{"c/1/numformer": {"rss_bytes": r, "batches": {"1": _batch(0.1, d, 3 / d)}}}
              for r, d in ((10, 0.3), (30, 0.9), (20, 0.6))]
    merged = gs.merge_rounds(rounds)["c/1/numformer"]
    b = merged["batches"]["1"]
    assert b["decode_seconds"] == 0.6
    assert b["decode_tokens_per_sec"] == pytest.approx(5.0)        # 3 tokens / 0.6 s
    assert b["ms_per_token"] == pytest.approx(200.0)
    assert b["runs"] == 3
    assert b["decode_seconds_min"] == 0.15                           # the fastest run of any round
    assert merged["rss_bytes"] == 30                                 # the highest peak of the rounds


def test_merge_rounds_keeps_a_case_that_failed_every_round():
    rounds = [{"c/1/hf": {"error": "boom"}}, {"c/1/hf": {"error": "boom again"}}]
    assert gs.merge_rounds(rounds)["c/1/hf"] == {"error": "boom"}


def test_agree_counts_the_leading_equal_tokens():
    assert gs._agree([[5, 6, 7, 8]], [[5, 6, 9, 8]]) == 2
    assert gs._agree([[5, 6]], [[5, 6]]) == 2
    assert gs._agree([[1]], [[2]]) == 0


def test_ratio_rounds_is_the_spread_of_per_round_ratios():
    rounds = [{"a": {"batches": {"1": {"decode_tokens_per_sec": x}}}, "b": {"batches": {"1": {"decode_tokens_per_sec": 10}}}}
              for x in (20, 30, 25)]
    rounds.append({"a": {"error": "x"}, "b": {"batches": {"1": {"decode_tokens_per_sec": 10}}}})
    sp = gs._ratio_rounds(rounds, "a", "b", 1)
    assert (sp["min"], sp["median"], sp["max"], sp["n"]) == (2.0, 2.5, 3.0, 3)


def test_prompt_ids_are_the_same_for_every_case_and_within_the_vocabulary():
    a, b = gs.prompt_ids(7, 50, 2, 64), gs.prompt_ids(7, 50, 2, 64)
    assert a == b and len(a) == 2 and all(len(r) == 64 for r in a)
    assert all(0 <= t < 50 for r in a for t in r)
    assert gs.prompt_ids(8, 50, 2, 64) != a


def _sdist(path: Path):
    files = {"pkg-1.0/vendor/llama.cpp/convert_hf_to_gguf.py": b"print('converter')\n",
             "pkg-1.0/vendor/llama.cpp/conversion/base.py": b"",
             "pkg-1.0/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
             "pkg-1.0/vendor/llama.cpp/src/llama.cpp": b"// not needed\n",
             "pkg-1.0/llama_cpp/llama.py": b""}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extract_converter_takes_only_the_converter_and_gguf_py(tmp_path):
    src = tmp_path / "pkg-1.0.tar.gz"
    _sdist(src)
    vendor = gs.extract_converter(src, tmp_path / "cache")
    assert vendor == tmp_path / "cache" / "pkg-1.0" / "vendor" / "llama.cpp"
    got = sorted(str(p.relative_to(vendor)) for p in vendor.rglob("*") if p.is_file())
    assert got == ["conversion/base.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert not (tmp_path / "cache" / "pkg-1.0" / "llama_cpp").exists()


def test_make_ggufs_refuses_a_vocabulary_too_small_for_a_bpe(tmp_path):
    args = gs.main.__globals__["argparse"].Namespace(llama_src=str(tmp_path / "none.tar.gz"), seed=1,
                                                     pos_encoding="learned", cache_dir=str(tmp_path))
    assert "too small" in gs.make_ggufs("baby512", gs.GEN_CONFIGS["baby512"], args)["error"]
    assert "source archive" in gs.make_ggufs("gpt2", gs.GEN_CONFIGS["gpt2"], args)["error"]


def test_without_llama_python_the_peer_is_skipped_with_one_line(tmp_path, monkeypatch, capsys):
    published = {}
    monkeypatch.setattr(common, "publish", lambda name, payload, markdown, info: published.update(payload=payload))
    code = gs.main(["--configs", TINY, "--impls", "numformer,llama.cpp-q8_0", "--llama_python",
                    str(tmp_path / "no-python"), "--prompt_len", "4", "--new_tokens", "3", "--reps", "1"])
    out = capsys.readouterr().out
    assert code == 0
    skipped = [line for line in out.splitlines() if "llama.cpp peer skipped" in line]
    assert len(skipped) == 1 and "--llama_python" in skipped[0] and "pip install llama-cpp-python" in skipped[0]
    payload = json.loads(json.dumps(published["payload"], default=str))
    assert list(payload["results"]) == ["tiny/1/numformer"]
    assert payload["results"]["tiny/1/numformer"]["batches"]["1"]["decode_tokens_per_sec"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--impls", "numformer,vllm"], "--impls"),
    (["--threads", "0"], "at least 1"),
    (["--threads", "two"], "whole numbers"),
    (["--new_tokens", "1"], "at least 2"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gs.main(["--configs", TINY, *argv])
    assert e.value.code != 0
    assert message in capsys.readouterr().err


def test_report_names_a_case_whose_median_is_far_above_its_fastest_run(monkeypatch, capsys):
    published = {}
    monkeypatch.setattr(common, "publish", lambda name, payload, markdown, info: published.update(md=markdown))
    args = gs.main.__globals__["argparse"].Namespace(new_tokens=4, prompt_len=2, pos_encoding="learned")

    def case(decode, fastest):
        b = _batch(0.01, decode, 3 / decode)
        b["decode_seconds_min"] = fastest
        b["ms_per_token"] = 1000 * decode / 3
        return {"batches": {"1": b}}

    results = {"c/1/numformer": case(0.3, 0.25), "c/1/numformer-int8": case(0.9, 0.3)}
    gs.report(args, {"c": {}}, ["numformer", "numformer-int8"], [1], [1], {"cpu": "x", "python": "3", "numpy": "2"},
              results, [results])
    notes = [line for line in published["md"].splitlines() if "over twice the fastest run" in line]
    assert len(notes) == 1
    assert "numformer int8 (300.0 against 100.0)" in notes[0] and "float32" not in notes[0]
