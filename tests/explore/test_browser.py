"""The explorer page in a real browser (headless Chromium from the distribution, via Playwright).

Every test fails on a console error, on any network request other than the page itself, and on a
blank canvas. The numbers are checked against numformer: the attention the heatmap draws is the
matrix of the selected layer and head, and the next-token bars are the distribution that
numformer.model.generate.sample_next draws from, read off the sampler itself.
"""

import math

import numpy as np
import pytest

from numformer.explore import build_page, explore_data, trace
from numformer.model.generate import sample_next

from .conftest import TEXT, cli, tiny_model

SECTIONS = ["attention", "next-token", "prompt", "logit-lens", "stream", "training", "formulas"]


class Opened:
    """A page opened from a file, with every console error and network request recorded."""

    def __init__(self, browser, path, viewport=(1280, 900)):
        self.url = path.resolve().as_uri()
        self.page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(self.url)
        self.page.wait_for_function("window.numformerExplorer !== undefined")

    def check_clean(self):
        """No console error, no request but the page's own, no blank canvas."""
        assert self.errors == []
        assert self.requests == [self.url]
        blank = self.page.evaluate("""() => [...document.querySelectorAll('canvas')].map((c, k) => {
            if (!c.width || !c.height) return k;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            for (let o = 0; o < d.length; o += 4) {
              if (d[o + 3] !== 0 && (d[o] !== 255 || d[o + 1] !== 255 || d[o + 2] !== 255)) return null;
            }
            return k;             // every pixel transparent or white: nothing drawn on it
          }).filter((k) => k !== null)""")
        assert blank == [], f"blank canvases: {blank}"
        assert self.page.evaluate("document.querySelectorAll('canvas').length") >= 4

    def close(self):
        self.page.close()


def write_page(tmp_path, model, prompt, **kw):
    ids = model.tokenizer.encode(prompt)
    path = tmp_path / "explorer.html"
    path.write_text(build_page(explore_data(model, ids, **kw)), encoding="utf-8")
    return path, ids


# the page's colour for a weight that is not a finite number
NOT_FINITE_RGB = (204, 0, 153)


def attn_rgb(v):
    """The page's colour for an attention weight: white to (8, 48, 107) on √v."""
    t = math.sqrt(min(1.0, max(0.0, v)))
    return np.array([255 + (c - 255) * t for c in (8, 48, 107)])


def drawn_cells(page, rows=None):
    """The colour at the centre of every cell of the main heatmap's rows (all rows by default),
    (len(rows), T, 3)."""
    return np.array(page.evaluate("""(rows) => {
        const c = document.getElementById('attn-canvas');
        const T = window.numformerExplorer.data.tokens.length;
        const cell = +c.dataset.cell, x0 = +c.dataset.left, y0 = +c.dataset.top;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return (rows || [...Array(T).keys()]).map((i) => [...Array(T).keys()].map((j) => {
          const x = x0 + j * cell + (cell >> 1), y = y0 + i * cell + (cell >> 1), o = (y * c.width + x) * 4;
          return [d[o], d[o + 1], d[o + 2]]; }));
        }""", rows), dtype=np.float64)


def assert_draws(page, A):
    """The heatmap shows matrix A (T, T) below the diagonal and the mask's grey above it."""
    cells = drawn_cells(page)
    T = A.shape[0]
    low = np.tril_indices(T)
    expected = np.array([attn_rgb(v) for v in A[low]])
    assert np.abs(cells[low] - expected).max() <= 1.0
    up = np.triu_indices(T, 1)
    assert np.all(cells[up][:, 0] == cells[up][:, 1]) and np.all(cells[up][:, 1] == cells[up][:, 2])  # grey


def test_attention_heatmap_draws_the_selected_matrix(browser, tmp_path, screenshots):
    model = tiny_model(n_layer=2, n_head=3, n_embd=48)
    path, ids = write_page(tmp_path, model, "ROMEO:\nBut soft, what")
    tr = trace(model, ids)
    o = Opened(browser, path)
    page = o.page
    d = page.evaluate("window.numformerExplorer.data")
    # the embedded matrices are numformer's attention for the same ids
    assert d["token_ids"] == ids.tolist()
    np.testing.assert_allclose(np.array(d["attention"]), np.stack(tr.attention), rtol=0, atol=1e-6)

    assert_draws(page, tr.attention[0][0])
    for layer, head in [(1, 2), (0, 1), (1, 0)]:
        page.select_option("#attn-layer", index=layer)
        page.select_option("#attn-head", index=head)
        canvas = page.locator("#attn-canvas")
        assert (canvas.get_attribute("data-layer"), canvas.get_attribute("data-head")) == (str(layer), str(head))
        assert_draws(page, tr.attention[layer][head])
        # and not some other head's matrix: the heads differ enough to tell
        with pytest.raises(AssertionError):
            assert_draws(page, tr.attention[1 - layer][head])
    # a thumbnail of the overview selects its head too
    page.click('.thumb[data-layer="1"][data-head="1"]')
    assert_draws(page, tr.attention[1][1])
    assert page.locator(".thumb.selected").count() == 1
    # hovering a cell names the query, the key and the weight
    box = page.locator("#attn-canvas").bounding_box()
    c = page.locator("#attn-canvas")
    cell, x0, y0 = (int(c.get_attribute(k)) for k in ("data-cell", "data-left", "data-top"))
    page.mouse.move(box["x"] + x0 + 2 * cell + cell / 2, box["y"] + y0 + 7 * cell + cell / 2)
    tip = page.locator("#tooltip").inner_text()
    assert "query 7" in tip and "key 2" in tip and f"{tr.attention[1][1][7, 2]:.4f}" in tip
    page.mouse.move(box["x"] + x0 + 9 * cell + cell / 2, box["y"] + y0 + 3 * cell + cell / 2)
    assert "masked" in page.locator("#tooltip").inner_text()
    page.locator("#attention").screenshot(path=str(screenshots / "explorer-attention-test.png"))
    o.check_clean()
    o.close()


class _Uniform:
    """A stand-in for np.random.Generator whose random() returns given numbers."""

    def __init__(self, u):
        self.u = u

    def random(self, size):
        return self.u.reshape(size)


def sampler_distribution(logits, temperature, top_k, top_p):
    """The distribution numformer.model.generate.sample_next draws from, read off sample_next itself.

    For a uniform u it returns the number of entries of its cumulative distribution F that are
    <= u (F normalised to end at 1), so it draws a token beyond j exactly when u >= F(j). Bisection
    on u, for every j at once (row j of a batch), finds each F(j); p(j) = F(j) − F(j − 1).
    """
    V = len(logits)
    rows = np.tile(np.asarray(logits, dtype=np.float64), (V, 1))      # (V, V): row j finds F(j)
    lo, hi = np.zeros(V), np.ones(V)

    def beyond(u):
        return sample_next(rows, temperature, top_k, top_p, rng=_Uniform(u.copy())) > np.arange(V)

    for _ in range(64):
        mid = (lo + hi) / 2
        b = beyond(mid)
        hi, lo = np.where(b, mid, hi), np.where(b, lo, mid)
    F = np.where(beyond(np.zeros(V)), 0.0, hi)          # F(j) = 0 exactly: drawn beyond j even at u = 0
    return np.diff(np.concatenate([[0.0], F]))


def shown_bars(page):
    rows = page.eval_on_selector_all("#next-bars .bar-row", "rs => rs.map(r => [+r.dataset.id, +r.dataset.p])")
    kept = int(page.locator("#next-caption").get_attribute("data-kept"))
    return rows, kept


def assert_bars(page, p):
    """The bars are the most likely tokens of p, with p's values within 1e-4; the count of tokens
    that can be drawn is p's."""
    rows, kept = shown_bars(page)
    assert kept == int(np.count_nonzero(p))
    assert len(rows) == min(20, kept)
    for token, shown in rows:
        assert abs(shown - p[token]) <= 1e-4, (token, shown, p[token])
    assert sorted(p, reverse=True)[len(rows) - 1] <= min(s for _, s in rows) + 1e-4


def test_sampling_controls_give_the_samplers_distribution(browser, tmp_path, screenshots):
    model = tiny_model()
    prompt = "JULIET:\nO Romeo, Romeo"
    path, ids = write_page(tmp_path, model, prompt)
    logits = trace(model, ids).logits
    o = Opened(browser, path)
    page = o.page

    # the page opens on numformer sample's defaults at the last position
    assert page.input_value("#temperature-value") == "0.8" and page.input_value("#top-k") == "200"
    assert_bars(page, sampler_distribution(logits[-1], 0.8, 200, None))

    settings = [("1.3", "5", "1"), ("0.7", "0", "0.6"), ("1", "12", "0.35"), ("0", "0", "1"), ("2", "3", "0.9")]
    for temperature, top_k, top_p in settings:
        page.fill("#temperature-value", temperature)
        page.fill("#top-k", top_k)
        page.fill("#top-p-value", top_p)
        p = sampler_distribution(logits[-1], float(temperature), int(top_k) or None,
                                 None if top_p == "1" else float(top_p))
        assert_bars(page, p)

    # another position, and the sliders rather than the boxes
    page.click('#next-context .tok[data-pos="4"]')
    page.eval_on_selector("#temperature", "e => { e.value = '0.55'; e.dispatchEvent(new Event('input')); }")
    page.eval_on_selector("#top-p", "e => { e.value = '0.8'; e.dispatchEvent(new Event('input')); }")
    page.fill("#top-k", "0")
    assert page.input_value("#temperature-value") == "0.55"
    assert_bars(page, sampler_distribution(logits[4], 0.55, None, 0.8))
    page.locator("#next-token").screenshot(path=str(screenshots / "explorer-next-token-test.png"))
    o.check_clean()
    o.close()


def test_the_sampler_probe_can_tell_distributions_apart():
    """sampler_distribution is exact: it gives softmax(z / T) with no filter, and top-k zeros."""
    z = np.array([2.0, 1.0, 0.5, -1.0, 0.0])
    p = sampler_distribution(z, 0.7, None, None)
    q = np.exp(z / 0.7) / np.exp(z / 0.7).sum()
    np.testing.assert_allclose(p, q, atol=1e-12)
    assert np.count_nonzero(sampler_distribution(z, 1.0, 2, None)) == 2
    assert sampler_distribution(z, 0.0, None, None).tolist() == [1, 0, 0, 0, 0]


def test_a_trained_run_shows_all_seven_parts(browser, trained_run, tmp_path, screenshots):
    """The page `numformer explore` writes for a real run: every part drawn, formulas rendered."""
    out = tmp_path / "explorer.html"
    r = cli(["explore", trained_run, "--prompt", "ROMEO:\nBut soft", "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    o = Opened(browser, out)
    page = o.page
    for sid in SECTIONS:
        box = page.locator(f"#{sid}").bounding_box()
        assert box and box["height"] > 80, sid
        page.locator(f"#{sid}").screenshot(path=str(screenshots / f"part-{sid}.png"))
    assert page.locator("#loss-chart").count() == 1 and page.locator("#lr-chart").count() == 1
    assert page.locator("#prompt-colored .tok").count() == len("ROMEO:\nBut soft")
    assert page.locator("#lens-table tr").count() == 2 + 2 + 1       # input, 3 streams, next
    # the thirteen formulas are rendered as MathML, each with its verdict
    heights = page.eval_on_selector_all(".formula math", "ms => ms.map(m => m.getBoundingClientRect().height)")
    assert len(heights) == 13 and min(heights) > 15
    verdicts = page.eval_on_selector_all(".formula .verdict", "vs => vs.map(v => v.textContent)")
    assert len(verdicts) == 13 and any(v.startswith("differs by") for v in verdicts)
    # every link to a formula lands on one
    targets = page.eval_on_selector_all('a[href^="#formula-"]', "as => as.map(a => a.getAttribute('href').slice(1))")
    assert {"formula-attention", "formula-softmax", "formula-layernorm", "formula-positional_encoding",
            "formula-cross_entropy"} <= set(targets)
    for t in set(targets):
        assert page.locator(f"#{t}").count() == 1, t
    # hovering a prompt token lists the model's top five there
    page.locator('#prompt-colored .tok[data-pos="3"]').hover()
    assert page.locator("#tooltip").inner_text().count("\n") >= 6
    page.screenshot(path=str(screenshots / "explorer-full.png"), full_page=True)
    o.check_clean()
    o.close()


def test_a_page_without_metrics(browser, saved_model, tmp_path):
    path, _ = saved_model
    out = tmp_path / "p.html"
    assert cli(["explore", path, "--prompt", "R", "--out", out], cwd=tmp_path).returncode == 0
    o = Opened(browser, out)
    assert "No metrics.jsonl" in o.page.locator("#training").inner_text()
    assert o.page.locator("#next-bars .bar-row").count() == 20
    o.check_clean()
    o.close()


def test_512_tokens(browser, tmp_path, screenshots):
    """A long prompt: the main heatmap is one pixel per cell, the overview is downsampled, and
    switching heads still draws the matching matrix."""
    model = tiny_model(block_size=512, n_embd=16)
    prompt = (TEXT * 8)[:512]
    path, ids = write_page(tmp_path, model, prompt)
    tr = trace(model, ids)
    o = Opened(browser, path)
    page = o.page
    c = page.locator("#attn-canvas")
    assert c.get_attribute("data-cell") == "1"
    page.select_option("#attn-layer", index=1)
    page.select_option("#attn-head", index=1)
    rows = list(range(0, 512, 37)) + [511]
    cells = drawn_cells(page, rows)
    A = tr.attention[1][1]
    for k, i in enumerate(rows):
        assert np.abs(cells[k, : i + 1] - np.array([attn_rgb(v) for v in A[i, : i + 1]])).max() <= 1.0
    thumbs = page.eval_on_selector_all(".thumb canvas", "cs => cs.map(c => [c.width, c.height])")
    assert thumbs == [[96, 96]] * 4
    page.locator("#attention").screenshot(path=str(screenshots / "explorer-512.png"))
    o.check_clean()
    o.close()


def long_run(folder, model, n_rows):
    """A run folder with the model's checkpoint in best/ and a metrics.jsonl of n_rows rows: a long
    run evaluated often. The train loss falls from 4 to 1 with one spike to 9 at step 10 * (n_rows // 3)."""
    model.save(folder / "best", tokenizer=model.tokenizer.to_json())
    spike = n_rows // 3
    lines = []
    for k in range(n_rows):
        loss = 9.0 if k == spike else 4.0 - 3.0 * k / n_rows
        lines.append(f'{{"step": {10 * k}, "train_loss": {loss}, "val_loss": {loss + 0.1}, "lr": 0.001}}\n')
    (folder / "metrics.jsonl").write_text("".join(lines), encoding="utf-8")
    return 10 * spike


def test_a_long_runs_curves_and_the_formulas_are_drawn(browser, tmp_path):
    """At about 100,000 rows Math.min(...points) overflowed the browser's stack: the training panel
    and everything after it (the thirteen formula cards) were missing."""
    run = tmp_path / "run"
    spike = long_run(run, tiny_model(), 120_000)
    out = tmp_path / "p.html"
    r = cli(["explore", run, "--prompt", "ROMEO:", "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    o = Opened(browser, out)
    page = o.page
    assert page.locator("#loss-chart").count() == 1 and page.locator("#lr-chart").count() == 1
    assert page.locator(".formula").count() == 13
    caption = page.locator("#training figcaption").first.inner_text()
    assert "120,000 evaluations" in caption
    # the curve keeps its shape: the spike and the last value are among the rows drawn
    d = page.evaluate("window.numformerExplorer.data")
    assert {"step": spike, "train_loss": 9.0} in [{k: m[k] for k in ("step", "train_loss")} for m in d["metrics"]]
    assert d["metrics"][-1]["step"] == 10 * 119_999
    o.check_clean()
    o.close()


def test_a_page_with_every_row_of_a_long_run_draws(browser, tmp_path, monkeypatch):
    """The page itself copes with 200,000 rows (no spread of a long array into a call)."""
    from numformer.explore import data as explore_data_module

    monkeypatch.setattr(explore_data_module, "METRICS_ROWS", 10**9)
    model = tiny_model()
    rows = [{"step": k, "train_loss": 4.0 - k / 1e5, "val_loss": 4.1 - k / 1e5, "lr": 1e-3} for k in range(200_000)]
    path, _ = write_page(tmp_path, model, "ROMEO:", metrics=rows)
    o = Opened(browser, path)
    assert o.page.evaluate("window.numformerExplorer.data.metrics.length") == 200_000
    assert o.page.locator("#loss-chart").count() == 1 and o.page.locator(".formula").count() == 13
    o.check_clean()
    o.close()


def test_a_part_that_fails_leaves_the_others_drawn(browser, tmp_path):
    """One part whose data it cannot draw says so in its own section; the parts after it are drawn."""
    model = tiny_model()
    data = explore_data(model, model.tokenizer.encode("ROMEO:"))
    data["metrics"] = [{"step": 0, "train_loss": 1.0}, None]           # no row numformer writes
    path = tmp_path / "p.html"
    path.write_text(build_page(data), encoding="utf-8")
    o = Opened(browser, path)
    assert "This part could not be drawn" in o.page.locator("#training").inner_text()
    assert o.page.locator(".formula").count() == 13
    assert len(o.errors) == 1 and "training" in o.errors[0]             # and the console says which
    o.close()


def test_a_model_whose_numbers_overflow_is_drawn_honestly(browser, tmp_path):
    """Weights that overflow float32: the page opens clean, says so, draws what is not finite in
    its own colour, and gives no distribution built from NaN."""
    from .test_command import overflowing_models

    for name, ckpt in overflowing_models(tmp_path).items():
        out = tmp_path / f"{name}.html"
        r = cli(["explore", ckpt, "--prompt", "ROMEO:", "--out", out], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        o = Opened(browser, out)
        page = o.page
        assert "not finite" in page.locator("#notice").inner_text()
        assert "not all finite" in page.locator("#next-caption").inner_text()
        assert page.locator("#next-bars .bar-row").count() == 0
        A = page.evaluate("window.numformerExplorer.data.attention[1][0]")
        page.select_option("#attn-layer", index=1)
        cells = drawn_cells(page)
        for i, row in enumerate(A):
            for j in range(i + 1):
                if row[j] is None:
                    assert cells[i, j].tolist() == list(NOT_FINITE_RGB), (i, j)
        if name == "everywhere":
            assert any(v is None for row in A for v in row[: len(row)])
            assert "undefined" in page.locator("#prompt-loss").inner_text()
        o.check_clean()
        o.close()


def label_ink(page):
    """For each position, whether the row labels' margin and the column labels' band hold ink
    (a pixel that is not white) level with its row and its column."""
    return page.evaluate("""() => {
        const c = document.getElementById('attn-canvas');
        const T = window.numformerExplorer.data.tokens.length;
        const cell = +c.dataset.cell, x0 = +c.dataset.left, y0 = +c.dataset.top;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const ink = (xa, xb, ya, yb) => {
          for (let y = Math.max(0, ya); y < yb; y++) for (let x = Math.max(0, xa); x < xb; x++) {
            const o = (y * c.width + x) * 4;
            if (d[o] < 200) return true;
          }
          return false;
        };
        // within 5 pixels of the cell's centre line (a label is 9 or more pixels high), and short of
        // the 3-pixel ticks beside the heatmap, which are not labels
        return [...Array(T).keys()].map((i) => {
          const mid = Math.floor(i * cell + cell / 2);
          return [ink(0, x0 - 4, y0 + mid - 5, y0 + mid + 6), ink(x0 + mid - 5, x0 + mid + 6, 0, y0 - 4)];
        });
      }""")


@pytest.mark.parametrize("T", [50, 64, 200])
def test_attention_axes_are_labelled_at_a_full_context(browser, tmp_path, T):
    """At 64 tokens (the default model's context) the cells are 8 pixels and no label was drawn;
    now every token is labelled where a label fits, else every second, third, ... one."""
    model = tiny_model(block_size=T)
    path, _ = write_page(tmp_path, model, (TEXT * 4)[:T])
    o = Opened(browser, path)
    c = o.page.locator("#attn-canvas")
    assert int(c.get_attribute("data-left")) > 0 and int(c.get_attribute("data-top")) > 0
    step = int(c.get_attribute("data-label-step"))
    cell = int(c.get_attribute("data-cell"))
    assert 1 <= step and (step - 1) * cell < 11                    # no sparser than a 9-pixel font needs
    assert (step == 1) == (cell >= 9)                              # every token's label where cells allow
    ink = label_ink(o.page)
    labelled = [i for i in range(T) if i % step == 0]
    assert all(ink[i][0] and ink[i][1] for i in labelled), [i for i in labelled if not all(ink[i])]
    o.check_clean()
    o.close()


def test_a_llama_run_shows_query_heads_the_rotation_and_its_formulas(browser, trained_llama_run, tmp_path,
                                                                      screenshots):
    """The page `numformer explore` writes for a `--arch llama` run whose 4 query heads share 2
    key/value heads: attention per query head, RoPE's angles where a GPT has its table, and the
    formulas a Llama runs."""
    from numformer.model.llama import Llama

    out = tmp_path / "llama.html"
    prompt = "ROMEO:\nBut soft"
    r = cli(["explore", trained_llama_run, "--prompt", prompt, "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 heads (2 key/value)" in r.stdout
    model = Llama.load(trained_llama_run / "best")
    tr = trace(model, model.tokenizer.encode(prompt))
    o = Opened(browser, out)
    page = o.page
    for sid in SECTIONS:
        box = page.locator(f"#{sid}").bounding_box()
        assert box and box["height"] > 80, sid
        page.locator(f"#{sid}").screenshot(path=str(screenshots / f"llama-part-{sid}.png"))
    summary = page.locator("#summary").inner_text()
    assert "4 heads sharing 2 key/value heads" in summary and "RoPE positions" in summary

    # 1. one matrix per query head, each saying which key/value head it reads
    assert page.eval_on_selector_all("#attn-head option", "os => os.map(o => o.textContent)") == \
        ["1 (kv 1)", "2 (kv 1)", "3 (kv 2)", "4 (kv 2)"]
    assert page.locator(".thumb").count() == 2 * 4
    assert "heads 1–2 read key/value head 1, heads 3–4 read key/value head 2" in page.locator("#attention").inner_text()
    for layer, head in [(0, 0), (1, 3), (0, 2)]:
        page.select_option("#attn-layer", index=layer)
        page.select_option("#attn-head", index=head)
        assert_draws(page, tr.attention[layer][head])
    c = page.locator("#attn-canvas")
    c.scroll_into_view_if_needed()
    box = c.bounding_box()
    cell, x0, y0 = (int(c.get_attribute(k)) for k in ("data-cell", "data-left", "data-top"))
    page.mouse.move(box["x"] + x0 + 1 * cell + cell / 2, box["y"] + y0 + 5 * cell + cell / 2)
    tip = page.locator("#tooltip").inner_text()
    assert "head 3 (key/value head 2)" in tip and f"{tr.attention[0][2][5, 1]:.4f}" in tip

    # 5. no position table: the rotation's cos and sin, and a line that says so
    assert page.locator("#pos-heatmap").count() == 0 and page.locator("#pos-similarity").count() == 0
    stream = page.locator("#stream").inner_text()
    assert "no position table" in stream and "θ = 10,000" in stream
    d = page.evaluate("window.numformerExplorer.data.positions")
    assert d["kind"] == "rope" and len(d["omega"]) == model.config.head_size // 2
    canvas = page.locator("#rope-sin")
    canvas.scroll_into_view_if_needed()
    cb = canvas.bounding_box()
    ph = page.evaluate("document.getElementById('rope-sin').height") / len(d["sin"])
    pw = page.evaluate("document.getElementById('rope-sin').width") / len(d["omega"])
    page.mouse.move(cb["x"] + pw * 0.5, cb["y"] + ph * 3.5)            # position 3, pair 0: angle 3 rad
    tip = page.locator("#tooltip").inner_text()
    assert "position 3, pair 0" in tip and "3.0000 rad" in tip and f"sin {math.sin(3.0):.4f}" in tip

    # 7. the formulas a Llama runs: the article's without the table, LayerNorm and GELU, then the four later ones
    ids = page.eval_on_selector_all(".formula", "fs => fs.map(f => f.id)")
    assert ids[-4:] == ["formula-rope", "formula-rmsnorm", "formula-swiglu", "formula-grouped_query_attention"]
    assert len(ids) == 14 and not {"formula-layernorm", "formula-gelu", "formula-positional_encoding"} & set(ids)
    heights = page.eval_on_selector_all(".formula math", "ms => ms.map(m => m.getBoundingClientRect().height)")
    assert len(heights) == 14 and min(heights) > 15
    verdicts = page.eval_on_selector_all(".formula .verdict", "vs => vs.map(v => v.textContent)")
    assert verdicts[-4:] == ["not in the article"] * 4
    targets = page.eval_on_selector_all('a[href^="#formula-"]', "as => as.map(a => a.getAttribute('href').slice(1))")
    assert {"formula-rmsnorm", "formula-rope", "formula-grouped_query_attention"} <= set(targets)
    assert not {"formula-layernorm", "formula-positional_encoding"} & set(targets)
    for t in set(targets):
        assert page.locator(f"#{t}").count() == 1, t
    assert "RMSNorm" in page.locator("#logit-lens .lead").inner_text()
    page.screenshot(path=str(screenshots / "explorer-llama-full.png"), full_page=True)
    o.check_clean()
    o.close()
