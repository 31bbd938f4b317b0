"""How big and how fast the `numformer explore` page is, by prompt length.

For each prompt length T the default model's shape (4 layers, 4 heads, 128 wide, block_size = T,
a character vocabulary) with random weights is run on T characters, the page is built, and
headless Chromium (the distribution's, through Playwright) opens it. Reported: the page's size,
the time Python takes to build it, the time the browser takes to parse and draw it (the
navigation's domContentLoaded), and the median time to redraw the attention heatmap for another
head and the next-token bars. Random weights give the same sizes and times as trained ones: the
page stores and draws every number either way.

    python benchmarks/explore_page.py                    # T = 64, 256, 512
    python benchmarks/explore_page.py --lengths 64 1024
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import finish_header, machine_header, md_table, publish, text_table  # noqa: E402

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the "
        "sun.\n\nJULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n")


def page_for(T: int) -> tuple[str, float]:
    from numformer import GPT, GPTConfig
    from numformer.data.tokenizer import CharTokenizer
    from numformer.explore import build_page, explore_data

    text = (TEXT * (T // len(TEXT) + 1))[:T]
    tok = CharTokenizer.from_text(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=T), seed=0).eval()
    model.tokenizer = tok
    t0 = time.perf_counter()
    html = build_page(explore_data(model, tok.encode(text)))
    return html, time.perf_counter() - t0


def browser_times(path: Path, reps: int) -> dict:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("explore_page.py needs Chromium: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(path.as_uri())
        page.wait_for_function("window.numformerExplorer !== undefined")
        nav = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
        redraw = page.evaluate("""(reps) => {
            const x = window.numformerExplorer, H = x.data.attention[0].length, L = x.data.attention.length;
            const attn = [], next = [];
            for (let k = 0; k < reps; k++) {
              x.state.layer = k % L; x.state.head = (k * 7) % H;
              let t0 = performance.now(); x.drawAttention(); attn.push(performance.now() - t0);
              t0 = performance.now(); x.drawNext(); next.push(performance.now() - t0);
            }
            return {attn, next}; }""", reps)
        browser.close()
    return {"load_ms": nav["domContentLoadedEventEnd"], "attn_ms": statistics.median(redraw["attn"]),
            "next_ms": statistics.median(redraw["next"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 512], help="prompt lengths T")
    ap.add_argument("--reps", type=int, default=10, help="redraws timed per length (median reported)")
    args = ap.parse_args()
    info = machine_header(with_torch=False)
    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for T in args.lengths:
            html, build_s = page_for(T)
            path = Path(tmp) / f"explorer-{T}.html"
            path.write_text(html, encoding="utf-8")
            r = {"T": T, "bytes": path.stat().st_size, "build_s": build_s, **browser_times(path, args.reps)}
            raw.append(r)
            rows.append([T, f"{r['bytes'] / 1e6:.2f}", f"{build_s:.2f}", f"{r['load_ms']:.0f}",
                         f"{r['attn_ms']:.1f}", f"{r['next_ms']:.1f}"])
    finish_header(info)
    headers = ["T", "page MB", "build s", "open ms", "redraw head ms", "next-token ms"]
    title = "numformer explore: the default model's shape (16 heads), random weights"
    print(title)
    print(text_table(headers, rows))
    publish("explore_page", {"info": info, "runs": raw}, f"{title}\n\n{md_table(headers, rows)}", info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
