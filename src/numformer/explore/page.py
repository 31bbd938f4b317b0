"""The explorer page: one self-contained HTML file.

page.html is the skeleton, page.css and page.js are put inside it, and the numbers go in once, as
JSON, in <script type="application/json" id="numformer-data">. Nothing is loaded from anywhere:
no script, style, font or image comes from a network, so the page works offline and behind any
firewall.

A page proves that numformer explore wrote it, so that `--out` replaces only such a page: it starts
with exactly HEAD, then a line with the SHA-256 of all the bytes after that line (is_explorer_page
checks both). A page that anyone changed, even by a byte, is then no longer numformer's.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from html import escape
from importlib import resources

MARKER = '<meta name="generator" content="numformer explore">'
# The exact start of every page, up to its SHA-256: page.html begins with HEAD + "@SHA256@" + SEAL_END.
HEAD = ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'{MARKER}\n<meta name="numformer-sha256" content="')
SEAL_END = '">\n'


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
    head, sep, rest = page.partition("@SHA256@" + SEAL_END)
    if head != HEAD or not sep:
        raise RuntimeError("page.html does not start with explore.page.HEAD and its @SHA256@ line")
    return HEAD + hashlib.sha256(rest.encode("utf-8")).hexdigest() + SEAL_END + rest


def is_explorer_page(file) -> bool:
    """True if `file` is a regular file that build_page made, unchanged since: it starts with HEAD,
    and the SHA-256 it carries is that of its bytes after the line that carries it. A link, a FIFO
    or a device is never a page (opened without following links and without waiting for a writer)."""
    start = (HEAD + "0" * 64 + SEAL_END).encode("utf-8")
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:                 # a symbolic link
            return False
        raise
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = f.read(len(start))
        if len(head) < len(start) or not head.startswith(HEAD.encode("utf-8")):
            return False
        carried = head[len(HEAD):len(HEAD) + 64]
        if not re.fullmatch(rb"[0-9a-f]{64}", carried) or not head.endswith(SEAL_END.encode("utf-8")):
            return False
        digest = hashlib.sha256()
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest().encode("ascii") == carried
