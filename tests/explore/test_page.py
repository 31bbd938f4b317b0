"""The page as a file: the JSON contract, self-containment, and what each part is fed."""

import hashlib
import json
import os
import re

import numpy as np

from numformer.explain import LATER, NAMES
from numformer.explain.examples import explain
from numformer.explore import build_page, data_json, explore_data, is_explorer_page, trace
from numformer.explore import data as explore_data_module

from .conftest import tiny_llama, tiny_model


def embedded(html: str) -> dict:
    """The object in <script type="application/json" id="numformer-data">."""
    m = re.search(r'<script type="application/json" id="numformer-data">(.*?)</script>', html, re.S)
    assert m, "no numformer-data element"
    return json.loads(m.group(1))


def test_contract_keys_and_shapes():
    model = tiny_model(n_head=4, n_layer=3)
    prompt = "ROMEO:\nBut soft"
    ids = model.tokenizer.encode(prompt)
    d = embedded(build_page(explore_data(model, ids)))
    T = len(ids)
    assert d["tokens"] == list(prompt) and "".join(d["tokens"]) == prompt
    assert d["token_ids"] == ids.tolist()
    att = d["attention"]
    assert len(att) == 3 and all(len(layer) == 4 for layer in att)
    assert all(len(m) == T and all(len(row) == T for row in m) for layer in att for m in layer)
    tr = trace(model, ids)
    np.testing.assert_allclose(np.array(att), np.stack(tr.attention), rtol=0,
                               atol=0.5 * 10.0 ** -d["attention_decimals"] + 1e-9)
    assert np.all(np.triu(np.array(att), k=1) == 0)


def test_whole_weights_are_written_short():
    """0.0 and 1.0 in the matrices become 0 and 1; nothing else in the JSON changes."""
    data = {"attention": [[[[1.0, 0.0], [0.25, 0.75]]]], "note": "[0.0,1.0]", "x": [0.0, 10.0, 1.05]}
    text = data_json(data)
    assert '"attention":[[[[1,0],[0.25,0.75]]]]' in text
    assert json.loads(text) == data


def test_a_token_cannot_break_out_of_the_script_element():
    model = tiny_model()
    prompt = "</script><b>&amp;"
    html = build_page(explore_data(model, model.tokenizer.encode(prompt)))
    assert html.count("</script>") == 2                          # the data element's and the code's
    assert embedded(html)["tokens"] == list(prompt)


def test_self_contained():
    """No script, style, font or image comes from anywhere else."""
    model = tiny_model()
    html = build_page(explore_data(model, model.tokenizer.encode("ROMEO:")))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert not re.search(r"@import|url\(|<link\b|<script[^>]*\bsrc\b|<img\b|<iframe\b", html, re.I)
    assert not re.search(r"fetch\(|XMLHttpRequest|import\(", html)


def test_logits_next_tokens_and_lens():
    model = tiny_model()
    ids = model.tokenizer.encode("JULIET:\nO Romeo")
    d = explore_data(model, ids)
    tr = trace(model, ids)
    assert d["logits"]["complete"]
    np.testing.assert_allclose(np.array(d["logits"]["values"]), tr.logits, rtol=0, atol=1e-5)
    z = tr.logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert d["token_prob"][0] is None
    np.testing.assert_allclose(d["token_prob"][1:], p[np.arange(len(ids) - 1), ids[1:]], rtol=1e-9)
    assert d["top5"]["ids"][3] == np.argsort(-p[3])[:5].tolist()
    # the last row of the logit lens is the model's own prediction
    assert d["lens"]["ids"][-1] == p.argmax(-1).tolist()
    assert len(d["lens"]["ids"]) == model.config.n_layer + 1
    np.testing.assert_allclose(d["residual_norms"], np.linalg.norm(tr.residual, axis=-1), atol=1e-3)


def test_large_vocabulary_keeps_the_most_likely_logits(monkeypatch):
    monkeypatch.setattr(explore_data_module, "LOGITS_BUDGET", 100)
    monkeypatch.setattr(explore_data_module, "LOGITS_TOP_MIN", 7)
    monkeypatch.setattr(explore_data_module, "VOCAB_FULL", 10)
    model = tiny_model()
    ids = model.tokenizer.encode("ROMEO: But")
    d = explore_data(model, ids)
    tr = trace(model, ids)
    lg = d["logits"]
    assert not lg["complete"]
    keep = max(7, 100 // len(ids))
    for t in range(len(ids)):
        assert lg["ids"][t] == np.argsort(-tr.logits[t], kind="stable")[:keep].tolist()
        np.testing.assert_allclose(lg["values"][t], tr.logits[t][lg["ids"][t]], atol=1e-5)
    # the vocabulary then lists only the tokens the page shows, by id
    assert isinstance(d["vocab"], dict) and all(d["vocab"][str(i)] for i in lg["ids"][0])


def test_positions_beyond_the_budget_are_the_prompts(monkeypatch):
    monkeypatch.setattr(explore_data_module, "POSITION_VALUES", 100)
    model = tiny_model()                                           # 32 wide: 3 positions' worth
    assert len(explore_data(model, model.tokenizer.encode("ROMEO:"))["positions"]["table"]) == 6
    assert len(explore_data(model, model.tokenizer.encode("R"))["positions"]["table"]) == 3


def test_positions_as_the_model_adds_them():
    model = tiny_model()
    d = explore_data(model, model.tokenizer.encode("ROMEO:"))
    from numformer.ops import positional

    C, block = model.config.n_embd, model.config.block_size
    # the whole context's table, not just the prompt's six positions
    np.testing.assert_allclose(d["positions"]["table"], positional.sinusoidal(block, C) / np.sqrt(C), atol=1e-4)
    assert d["positions"]["scale"] == 1 / np.sqrt(C)
    for form in ("article", "paper"):                              # both add the table P as it is
        other = tiny_model(sinusoidal_form=form)
        d = explore_data(other, other.tokenizer.encode("ROMEO:"))
        np.testing.assert_allclose(d["positions"]["table"], positional.sinusoidal(block, C), atol=1e-4)
        assert d["positions"]["scale"] == 1.0
    learned = tiny_model(pos_encoding="learned")
    d = explore_data(learned, learned.tokenizer.encode("ROMEO:"))
    np.testing.assert_allclose(d["positions"]["table"], learned.params["transformer.wpe.weight"], atol=1e-4)


def test_formulas_are_numformer_explains():
    model = tiny_model()
    d = explore_data(model, model.tokenizer.encode("R"))
    forms = d["formulas"]
    assert [f["name"] for f in forms] == list(NAMES)
    for f, ex in zip(forms, explain()):
        doc = ex.to_json()
        assert f["agrees"] == doc["agrees"] and f["formula"] == doc["formula"]
        assert {s["key"]: s["computed"] for s in f["steps"]} == doc["computed"]
        assert f["verdict"] == {True: "agrees", False: "differs", None: "incomplete"}[doc["agrees"]]
        assert f["mathml"].startswith("<math") and "<mi>" in f["mathml"]
    assert {f["verdict"] for f in forms} == {"agrees", "differs", "incomplete"}


def test_metrics_rows():
    model = tiny_model()
    rows = [{"step": 0, "train_loss": 4.2, "val_loss": 4.3, "lr": 0.0, "tokens_per_sec": None},
            {"step": 10, "train_loss": 3.1, "val_loss": float("nan"), "lr": 1e-3},
            {"step": "bad"},
            # numbers JSON.parse would read as Infinity: a loss past float's range, a step past 2**53
            {"step": 20, "train_loss": 10**400, "val_loss": 3.0, "lr": True},
            {"step": 10**30, "train_loss": 1.0, "val_loss": 1.0}]
    d = explore_data(model, model.tokenizer.encode("R"), metrics=rows)
    assert d["metrics"] == [{"step": 0, "train_loss": 4.2, "val_loss": 4.3, "lr": 0.0},
                            {"step": 10, "train_loss": 3.1, "val_loss": None, "lr": 1e-3},
                            {"step": 20, "train_loss": None, "val_loss": 3.0, "lr": None}]
    json.dumps(d, allow_nan=False)


def test_a_page_carries_the_sha256_of_the_rest_of_itself(tmp_path):
    from numformer.explore.page import HEAD, SEAL_END

    model = tiny_model()
    html = build_page(explore_data(model, model.tokenizer.encode("ROMEO:")))
    assert html.startswith(HEAD)
    line_end = html.index(SEAL_END, len(HEAD)) + len(SEAL_END)
    rest = html[line_end:].encode("utf-8")
    assert html[len(HEAD):line_end - len(SEAL_END)] == hashlib.sha256(rest).hexdigest()
    page = tmp_path / "p.html"
    page.write_bytes(html.encode("utf-8"))
    assert is_explorer_page(page)
    page.write_bytes(html.encode("utf-8").replace(b"<h1>numformer explore</h1>", b"<h1>mine</h1>"))
    assert not is_explorer_page(page)
    page.write_bytes(HEAD.encode("utf-8"))
    assert not is_explorer_page(page)
    # a link to a page, and a FIFO, are not pages (and the FIFO is not waited on)
    page.write_bytes(html.encode("utf-8"))
    (tmp_path / "link.html").symlink_to(page)
    assert not is_explorer_page(tmp_path / "link.html")
    os.mkfifo(tmp_path / "fifo.html")
    assert not is_explorer_page(tmp_path / "fifo.html")


def test_a_long_curve_is_thinned_keeping_its_shape(monkeypatch):
    """Past METRICS_ROWS rows the page keeps, of each of about METRICS_ROWS // 10 stretches of the
    run, the first row and the rows where each curve is lowest and highest (and where it has a gap),
    and says how many rows there were."""
    monkeypatch.setattr(explore_data_module, "METRICS_ROWS", 100)
    model = tiny_model()
    n = 5000
    rng = np.random.default_rng(0)
    train = 3.0 + rng.normal(0, 0.1, n)
    train[1234], train[4321] = 9.0, 0.5                  # a spike and a dip
    rows = [{"step": 5 * k, "train_loss": float(train[k]), "val_loss": 4.0 if k != 777 else None,
             "lr": 1e-3 * (1 - k / n)} for k in range(n)]
    d = explore_data(model, model.tokenizer.encode("R"), metrics=rows)
    kept = d["metrics"]
    assert d["metrics_count"] == n
    assert 10 <= len(kept) <= 100
    steps = [m["step"] for m in kept]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 5 * (n - 1)
    by_step = {m["step"]: m for m in kept}
    assert by_step[5 * 1234]["train_loss"] == 9.0 and by_step[5 * 4321]["train_loss"] == 0.5
    assert by_step[5 * 777]["val_loss"] is None                       # the gap is kept
    assert min(m["lr"] for m in kept) == rows[-1]["lr"]
    assert all(m == {k: r[k] for k in ("step", "train_loss", "val_loss", "lr")}
               for m in kept for r in [rows[m["step"] // 5]])
    # a short run is kept whole
    d = explore_data(model, model.tokenizer.encode("R"), metrics=rows[:100])
    assert len(d["metrics"]) == 100 and d["metrics_count"] == 100


# ----------------------------------------------------------------------------- a Llama


def test_llama_contract_query_heads_and_groups():
    model = tiny_llama(n_head=4, n_kv_head=2, n_layer=2)
    prompt = "ROMEO:\nBut soft"
    ids = model.tokenizer.encode(prompt)
    d = embedded(build_page(explore_data(model, ids)))
    T = len(ids)
    assert d["tokens"] == list(prompt) and d["token_ids"] == ids.tolist()
    att = np.array(d["attention"])
    assert att.shape == (2, 4, T, T)                                  # n_layer x n_head QUERY heads
    np.testing.assert_allclose(att, np.stack(trace(model, ids).attention), rtol=0,
                               atol=0.5 * 10.0 ** -d["attention_decimals"] + 1e-9)
    assert d["kv_heads"] == [0, 0, 1, 1]
    assert d["model"]["family"] == "llama" and d["model"]["n_kv_head"] == 2
    assert embedded(build_page(explore_data(tiny_model(), ids)))["kv_heads"] is None


def test_llama_positions_are_ropes_rotation():
    """No table: cos and sin of p·ω_i, ω_i = θ^(−2i/hs), for the pairs of one head."""
    theta = 500_000.0
    model = tiny_llama(n_embd=48, n_head=4, n_kv_head=2, block_size=24, rope_theta=theta)   # hs = 12: 6 pairs
    P = explore_data(model, model.tokenizer.encode("ROMEO:"))["positions"]
    assert P["kind"] == "rope" and "table" not in P and P["theta"] == theta and P["head_size"] == 12
    omega = np.array([theta ** (-2 * i / 12) for i in range(6)])
    angle = np.arange(24)[:, None] * omega[None, :]                  # (positions, pairs)
    np.testing.assert_allclose(P["omega"], omega, rtol=1e-12)
    np.testing.assert_allclose(P["cos"], np.cos(angle), atol=5e-5)
    np.testing.assert_allclose(P["sin"], np.sin(angle), atol=5e-5)


def test_llama_positions_beyond_the_budget_are_the_prompts(monkeypatch):
    monkeypatch.setattr(explore_data_module, "POSITION_VALUES", 3 * 8)   # 3 positions of hs = 8
    model = tiny_llama()
    assert len(explore_data(model, model.tokenizer.encode("ROMEO:"))["positions"]["cos"]) == 6
    assert len(explore_data(model, model.tokenizer.encode("R"))["positions"]["sin"]) == 3


def test_llama_formulas_replace_the_ones_it_does_not_run():
    model = tiny_llama()
    forms = explore_data(model, model.tokenizer.encode("R"))["formulas"]
    names = [f["name"] for f in forms]
    assert names == [n for n in NAMES if n not in ("positional_encoding", "layernorm", "gelu")] + list(LATER)
    assert set(LATER) == {"rope", "rmsnorm", "swiglu", "grouped_query_attention"}
    by_name = {ex.name: ex for ex in explain(names)}
    for f in forms:
        doc = by_name[f["name"]].to_json()
        assert {s["key"]: s["computed"] for s in f["steps"]} == doc["computed"] and f["note"] == doc["note"]
        assert f["mathml"].startswith("<math") and "<mi>" in f["mathml"]
        assert f["in_article"] == (f["name"] in NAMES)
        assert (f["verdict"] == "later") == (f["name"] in LATER)
    assert "RoPE" in by_name["rope"].formula and "RoPE" in forms[names.index("rope")]["mathml"]
