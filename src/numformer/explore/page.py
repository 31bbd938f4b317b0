"""The explorer page: one self-contained HTML file.

page.html is the skeleton, page.css and page.js are put inside it, and the numbers go in once, as
JSON, in <script type="application/json" id="numformer-data">. Nothing is loaded from anywhere:
no script, style, font or image comes from a network, so the page works offline and behind any
firewall.
"""

from __future__ import annotations

import json
import re
from html import escape
from importlib import resources

MARKER = '<meta name="generator" content="numformer explore">'


def _asset(name: str) -> str:
    return resources.files("numformer.explore").joinpath(name).read_text(encoding="utf-8")


# In the attention matrices (numbers only, no strings) a weight of exactly 0 or 1 is written
# "0" or "1" rather than "0.0" or "1.0": the masked half of every matrix is zeros.
_WHOLE = re.compile(r"(?<=[\[,])([01])\.0(?=[,\]])")


def data_json(data: dict) -> str:
    """The data as JSON that is safe inside a <script> element: every "<" is written as \\u003c,
    so no "</script>" or "<!--" in a token can end or change the element."""
    rest = {k: v for k, v in data.items() if k != "attention"}
    text = json.dumps(rest, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if "attention" in data:
        matrices = json.dumps(data["attention"], allow_nan=False, separators=(",", ":"))
        text = '{"attention":' + _WHOLE.sub(r"\1", matrices) + ("," if rest else "") + text[1:]
    return text.replace("<", "\\u003c")


def build_page(data: dict) -> str:
    """The whole HTML page for explore_data's dict."""
    page = _asset("page.html")
    title = "numformer explore" + (f": {data['model']['source']}" if data.get("model", {}).get("source") else "")
    parts = {"@TITLE@": escape(title), "/*@CSS@*/": _asset("page.css"), "/*@JS@*/": _asset("page.js"),
             "@DATA@": data_json(data)}
    for marker, text in parts.items():        # each marker once; inserted text is never searched again
        head, sep, tail = page.partition(marker)
        if not sep:
            raise RuntimeError(f"page.html lacks the marker {marker}")
        page = head + text + tail
    return page
