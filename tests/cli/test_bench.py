"""`numformer bench`: it runs on a tiny config and reports every field as a positive number.

No speed is ever asserted (machines differ, and this one is shared); only that the command works,
that its FLOP count is the documented formula, and that bad input is one line.
"""

import json
import math
import subprocess
import sys

import pytest

from numformer.model.config import GPTConfig, LlamaConfig
from numformer.ops.fast import dispatch
from numformer.perf import flops_per_token, non_embedding_params

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "8", "--batch_size", "2",
        "--vocab_size", "11", "--iters", "3", "--warmup", "1", "--gemm_n", "64"]


def bench(*args):
    return subprocess.run([sys.executable, "-m", "numformer", "bench", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("extra", [[], ["--pos_encoding", "learned", "--dtype", "float64"]])
def test_json_fields_exist_and_are_positive(extra):
    p = bench(*TINY, *extra, "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    for key in ("ms_per_iter", "tokens_per_sec", "gflops", "ceiling_gflops", "share_of_ceiling", "rss_bytes",
                "params", "flops_per_token"):
        assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["iters"] == 3
    rows = {(c["op"], c["dtype"]): c for c in r["machine"]["dispatch"]}      # which implementation each fast op ran
    assert set(rows) == {(row.op, row.dtype) for row in dispatch.ROWS}
    assert all(c["runs"] in ("NumPy", "numba", "MKL") and c["why"] for c in rows.values())
    assert r["machine"]["kernels"] and r["machine"]["linear_blas"]
    # tokens/s and GFLOP/s follow from ms/iter, the batch and the documented FLOP count
    tokens = 2 * 8
    assert r["tokens_per_sec"] == pytest.approx(tokens / (r["ms_per_iter"] / 1000), rel=1e-9)
    assert r["gflops"] == pytest.approx(r["flops_per_token"] * r["tokens_per_sec"] / 1e9, rel=1e-9)
    # training on random tokens starts near ln V
    assert abs(r["first_loss"] - math.log(11)) < 0.5


def test_table_has_its_lines():
    p = bench(*TINY)
    assert p.returncode == 0, p.stderr
    assert "which implementation each fast op ran" in p.stdout
    report = p.stdout.split("which implementation each fast op ran")[1].splitlines()[1:]
    assert report[0].split() == ["op", "dtype", "runs", "what", "why"] and len(report) == 2 + len(dispatch.ROWS)
    for label in ("parameters", "time / iteration", "tokens / s", "model GFLOP/s", "matmul floor", "sgemm ceiling",
                  "peak memory"):
        line = next((ln for ln in p.stdout.splitlines() if ln.strip().startswith(label)), None)
        assert line is not None, (label, p.stdout)
        number = line.strip()[len(label):].split()[0].replace(",", "")
        assert float(number) > 0, line


def test_flop_count_is_6n_plus_attention():
    """6N + 12·L·T·C with N counted by hand (without the learned position table)."""
    C, L, T, V = 16, 3, 8, 11
    per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    n = V * C + L * per_layer + 2 * C
    for pos in ("sinusoidal", "learned"):
        cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=2, n_embd=C, pos_encoding=pos)
        assert non_embedding_params(cfg) == n
        assert flops_per_token(cfg) == 6 * n + 12 * L * T * C


def test_llama_flop_count_counts_the_head_once_and_the_lookup_never():
    """A Llama's N by hand: per layer two RMSNorm gains, q and o (C×C), k and v (C×nkv·hs each),
    gate, up and down (C×H each); RMSNorm_f; the LM head (V×C), whether its own or the tied
    embedding, counted once, and an untied embedding (a lookup) not at all."""
    C, L, T, V, H, nkv, hs = 16, 3, 8, 11, 24, 1, 4
    per_layer = 2 * C + 2 * C * C + 2 * C * nkv * hs + 3 * C * H
    n = L * per_layer + C + V * C
    for tied in (False, True):
        cfg = LlamaConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_kv_head=nkv, n_embd=C, n_hidden=H,
                          tie_embeddings=tied)
        assert non_embedding_params(cfg) == n
        assert flops_per_token(cfg) == 6 * n + 12 * L * T * C


def test_llama_bench_runs_and_refuses_the_other_archs_flags():
    p = bench(*TINY, "--arch", "llama", "--n_kv_head", "1", "--n_hidden", "24", "--tie_embeddings", "true", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["arch"] == "llama" and r["config"]["n_kv_head"] == 1 and r["config"]["tie_embeddings"] is True
    assert r["params"] == 11 * 16 + (2 * 16 + 2 * 16 * 16 + 2 * 16 * 8 + 3 * 16 * 24) + 16
    assert abs(r["first_loss"] - math.log(11)) < 0.5 and r["floor_ms"] > 0
    for args, words in ((["--arch", "llama", "--bias", "false"], "--bias applies to --arch gpt2"),
                        (["--n_kv_head", "1"], "--n_kv_head applies to --arch llama"),
                        (["--arch", "llama", "--n_kv_head", "3"], "divisible by n_kv_head")):
        p = bench(*TINY, *args)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and words in lines[0], p.stderr


def test_llama_matmul_floor_makes_its_seven_maps():
    """Per token, the Llama's maps are 2·(2C² + 2C·kv + 3C·H) multiply-adds per layer where the
    GPT's are 2·12C²; the attention products and the head are the same."""
    from numformer.perf import matmul_floor

    C, L, H, T, V, B, hidden, kv = 16, 2, 2, 8, 11, 3, 24, 8
    cfg = LlamaConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_kv_head=1, n_embd=C, n_hidden=hidden)
    r = matmul_floor(cfg, batch_size=B, threads=1, iters=1, warmup=0)
    gpt = _floor_flops(C, L, H, T, V, B)
    assert r["flops"] == gpt + 3 * 2 * B * T * L * (2 * C * C + 2 * C * kv + 3 * C * hidden - 12 * C * C)


def test_bad_config_is_one_line():
    p = bench("--n_embd", "10", "--n_head", "3", "--iters", "1")
    assert p.returncode != 0
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "divisible" in lines[0], p.stderr
    p = bench("--iters", "0")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def _floor_flops(C, L, H, T, V, B):
    """The FLOPs of a training step's matrix products, by hand: per token 2·(12C²·L + C·V) for
    the linear maps and the tied head, times 3 (forward, dx, dW); causal attention's six products
    per layer over the query chunks of 64 rows, each chunk against the keys up to its last row."""
    linear = 3 * 2 * B * T * (12 * C * C * L + C * V)
    q = 64
    if T < 2 * q:
        pairs = T * T
    else:
        pairs = sum((min(a + q, T) - a) * min(a + q, T) for a in range(0, T, q))
    attention = L * 6 * 2 * B * H * pairs * (C // H)
    return linear + attention


@pytest.mark.parametrize("T, threads", [(8, 1), (128, 2), (200, 2)])
def test_matmul_floor_makes_the_steps_products(T, threads):
    from numformer.perf import matmul_floor

    C, L, H, V, B = 16, 2, 2, 11, 3
    cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C)
    r = matmul_floor(cfg, batch_size=B, threads=threads, iters=2, warmup=0)
    assert r["flops"] == _floor_flops(C, L, H, T, V, B)
    assert r["threads"] == threads and r["ms"] > 0


def test_floor_is_reported_and_can_be_skipped():
    p = bench(*TINY, "--json")
    r = json.loads(p.stdout)
    assert 0 < r["floor_ms"] and r["floor_share"] == pytest.approx(r["floor_ms"] / r["ms_per_iter"], rel=1e-9)
    p = bench(*TINY, "--json", "--no_floor")
    r = json.loads(p.stdout)
    assert r["floor_ms"] is None and r["floor_share"] is None


@pytest.mark.parametrize("P, new", [(5, 4), (130, 3), (7, 1)])
def test_decode_floor_makes_the_generations_products(P, new):
    """GPT.generate: one pass over the prompt, then one position per further token (the last
    token needs no pass); causal prompt attention by chunks of 64 query rows."""
    from numformer.perf import decode_floor

    C, L, H, V, B = 16, 2, 2, 11, 2
    cfg = GPTConfig(vocab_size=V, block_size=P + new, n_layer=L, n_head=H, n_embd=C)
    per_row = 2 * (12 * C * C * L + C * V)
    q = 64
    pairs = P * P if P < 2 * q else sum((min(a + q, P) - a) * min(a + q, P) for a in range(0, P, q))
    want = B * P * per_row + L * 2 * 2 * B * H * (C // H) * pairs
    for t in range(P, P + new - 1):
        want += B * per_row + L * 2 * 2 * B * H * (C // H) * (t + 1)
    r = decode_floor(cfg, batch_size=B, prompt_len=P, new_tokens=new, reps=1)
    assert r["flops"] == want and r["seconds"] > 0
    with pytest.raises(ValueError, match="block size"):
        decode_floor(cfg, batch_size=B, prompt_len=P + 1, new_tokens=new + 1)


def test_peak_rss_is_the_process_own_not_its_parents():
    """Benchmark children report their own peak: started from a parent holding 320 MB, a child
    that allocates nothing reports well under it (ru_maxrss would report the parent's 320 MB)."""
    import numpy as np

    held = np.ones(40_000_000)                      # 320 MB resident in this process
    code = "from numformer.perf import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert held.sum() == held.size
    assert int(out) < 200 * 2**20
