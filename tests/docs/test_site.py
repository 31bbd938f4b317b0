"""The documentation site: `mkdocs build --strict` passes, and every built page, served from
127.0.0.1 and opened in headless Chromium, makes no request to another host, logs no console
error, draws its formulas (MathML with a nonzero size) and finds pages with the site's own search,
offline. The formula pages carry what the build took from numformer: the code of the source file
and the worked example's computed numbers."""

import functools
import http.server
import html
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.docs.conftest import MISSING

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built with --strict into a temporary folder; (folder, seconds it took)."""
    assert not MISSING, f"the docs extra is not installed ({', '.join(MISSING)}): pip install -c constraints.txt '.[docs]'"
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def server(site):
    """The built site over HTTP on 127.0.0.1, on a free port; its base URL."""
    folder, _ = site

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the distribution, driven by Playwright (as tests/explore do)."""
    from playwright.sync_api import sync_playwright
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("the site tests need Chromium from the distribution: apt-get install chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


def pages(folder: Path) -> list[str]:
    """Every page of the built site, as a path under its root: "", "formulas/attention/", ..."""
    out = []
    for html in sorted(folder.rglob("index.html")):
        rel = html.parent.relative_to(folder).as_posix()
        out.append("" if rel == "." else rel + "/")
    return out


def test_the_site_builds_with_every_page(site):
    folder, seconds = site
    found = pages(folder)
    formulas = [p for p in found if p.startswith("formulas/") and p != "formulas/"]
    assert len(formulas) == 20, formulas            # the article's 13, RoPE ... grouped-query attention, LoRA, erf, quant
    for part in ("guide/install/", "guide/explorer/", "guide/troubleshooting/", "guide/quantize/", "guide/explain/",
                 "reference/ops/", "performance/"):
        assert part in found
    print(f"mkdocs build --strict: {seconds:.1f} s, {len(found)} pages")


def test_formula_pages_carry_the_code_and_the_computed_example(site):
    folder, _ = site
    page = (folder / "formulas" / "attention" / "index.html").read_text(encoding="utf-8")
    source = (ROOT / "src" / "numformer" / "ops" / "attention.py").read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(source, 1) if line.startswith("def backward(dy, cache):"))
    last = max(i for i, line in enumerate(source, 1) if line.strip())
    shown = re.search(r"src/numformer/ops/attention\.py, lines (\d+)–(\d+)", page)
    assert shown and int(shown.group(2)) == last and int(shown.group(1)) < first, shown
    assert re.search(rf'class="normal">\s*{first}</span>', page)      # numbered as in the file
    text = re.sub(r"<[^>]+>", "", page)
    assert "def backward(dy, cache):" in text and "ds -= p * ds.sum(axis=-1, keepdims=True)" in text
    assert "0.3302" in page and "2.3395" in page                  # computed by numformer.explain at build time
    assert "wrong: it differs by 0.3395" in page
    assert "attention causal T=1 batch 1 one head" in page          # a row of the op table
    assert "<math" in page


def test_the_quantized_formats_page_carries_code_example_and_checks(site):
    """The page of numformer.ops.quant, beyond the op table's usual columns: the code from the
    file, one block computed in every format at build time, and the QUANT_CASES rows."""
    folder, _ = site
    page = (folder / "formulas" / "quant" / "index.html").read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert "src/numformer/ops/quant.py, lines" in page
    assert "def quantize_int8(w) -> Int8Blocks:" in text and "def _encode_q4_1(x):" in text
    for fmt in ("Q8_0", "Q4_0", "Q4_1"):                            # the block formats' table: bytes a block
        assert re.search(rf"<td>{fmt}</td>\s*<td[^>]*>{ {'Q8_0': 34, 'Q4_0': 18, 'Q4_1': 20}[fmt]}</td>", page), fmt
    assert "0x3EAB" in page                                         # bf16 of 1/3: 0x3EAAAAAB rounded up
    assert "int8 C_in 70: a short last block" in page               # a row of QUANT_CASES
    assert "Worst case. Rounding to the nearest integer" in text    # the docstring's derivation
    assert "<math" in page


def _open(browser, url):
    """Open url; (page, requests to another host, console errors)."""
    foreign, errors = [], []
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def route(r):
        host = urlsplit(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            r.continue_()
        else:
            foreign.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="networkidle")
    return page, foreign, errors


def test_every_page_offline_without_console_errors_and_with_math_drawn(site, server, browser):
    folder, _ = site
    checked, with_math = 0, 0
    for path in pages(folder):
        page, foreign, errors = _open(browser, f"{server}/{path}")
        assert not foreign, (path, foreign)
        assert not errors, (path, errors)
        sizes = page.evaluate("""() => [...document.querySelectorAll('math')].map(m => {
            const r = m.getBoundingClientRect(); return [r.width, r.height]; })""")
        if path.startswith("formulas/") and path != "formulas/":
            assert sizes, f"{path}: no formula"
            assert all(w > 0 and h > 0 for w, h in sizes), (path, sizes)
            with_math += 1
        page.close()
        checked += 1
    assert checked >= 40 and with_math == 20           # every formula page: the 20 of test_the_site_builds_with_every_page


def test_search_finds_pages_offline(server, browser):
    page, foreign, errors = _open(browser, f"{server}/")
    page.click("input.md-search__input")
    page.keyboard.type("cross-entropy")
    page.wait_for_selector(".md-search-result__item", timeout=15000)
    hits = page.eval_on_selector_all(".md-search-result__item a", "els => els.map(a => a.href)")
    assert any("/formulas/cross_entropy/" in h for h in hits), hits
    assert not foreign and not errors, (foreign, errors)
    page.close()
