"""What `numformer explore --out` may write over, and how it writes: never through a link, never
over a file it cannot prove it wrote, never into something that is not a regular file."""

import os

from numformer.cli import main

from .conftest import cli
from .test_command import one_line_error
from .test_page import embedded


def test_a_link_planted_at_the_temporary_name_is_not_followed(saved_model, tmp_path):
    """explore used to write `.<out>.tmp-<pid>` with a plain write, then rename it over --out: a
    link planted at that name (in a shared folder such as /tmp) made it overwrite the link's
    target, and left --out a link. Run in this process, so the pid is known."""
    path, _ = saved_model
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's file\n", encoding="utf-8")
    out = tmp_path / "page.html"
    (tmp_path / f".page.html.tmp-{os.getpid()}").symlink_to(victim)
    assert main(["explore", str(path), "--prompt", "R", "--out", str(out)]) == 0
    assert victim.read_text(encoding="utf-8") == "someone's file\n"
    assert not out.is_symlink() and out.is_file()
    assert embedded(out.read_text(encoding="utf-8"))["tokens"] == ["R"]


def test_a_file_that_quotes_the_generator_tag_is_not_replaced(saved_model, tmp_path):
    """Ownership used to be "the first 4 KiB contain the generator <meta> tag": a user's notes
    about the page were overwritten."""
    path, _ = saved_model
    notes = tmp_path / "notes.md"
    text = '# my notes\n\nThe page has `<meta name="generator" content="numformer explore">` in its head.\n'
    notes.write_text(text, encoding="utf-8")
    r = cli(["explore", path, "--prompt", "R", "--out", notes], cwd=tmp_path)
    one_line_error(r, r"notes\.md exists and is not a page numformer explore wrote")
    assert notes.read_text(encoding="utf-8") == text


def test_a_page_it_wrote_is_replaced_and_an_edited_one_is_not(saved_model, tmp_path):
    """A page is numformer's when it starts as numformer's pages start and carries the SHA-256 of
    the rest of itself: one it wrote is replaced; once edited (or cut short) it is the user's."""
    path, _ = saved_model
    out = tmp_path / "page.html"
    assert cli(["explore", path, "--prompt", "R", "--out", out], cwd=tmp_path).returncode == 0
    r = cli(["explore", path, "--prompt", "RO", "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = out.read_bytes()
    assert embedded(page.decode("utf-8"))["tokens"] == ["R", "O"]
    for edited in (page.replace(b"<h1>numformer explore</h1>", b"<h1>my model</h1>"), page[:-1], page + b"\n"):
        out.write_bytes(edited)
        one_line_error(cli(["explore", path, "--prompt", "R", "--out", out], cwd=tmp_path),
                       r"page\.html exists and is not a page numformer explore wrote \(or it was changed since\)")
        assert out.read_bytes() == edited


def test_a_symlink_out_is_refused(saved_model, tmp_path):
    """--out naming a link, dangling or not, is refused: the user's link is not replaced by a file."""
    path, _ = saved_model
    page = tmp_path / "page.html"
    assert cli(["explore", path, "--prompt", "R", "--out", page], cwd=tmp_path).returncode == 0
    before = page.read_bytes()
    for target in (tmp_path / "nowhere.html", page):
        link = tmp_path / "link.html"
        link.symlink_to(target)
        one_line_error(cli(["explore", path, "--prompt", "RO", "--out", link], cwd=tmp_path),
                       r"--out .*link\.html is a symbolic link; refusing to replace it")
        assert link.is_symlink() and os.readlink(link) == str(target)
        link.unlink()
    assert page.read_bytes() == before and not (tmp_path / "nowhere.html").exists()


def test_out_that_is_not_a_regular_file_is_refused_before_loading(tmp_path):
    """A FIFO used to hang explore (it opened it to read the old page); a device is no page either.
    Refused before the checkpoint is even looked for: the checkpoint named here does not exist."""
    fifo = tmp_path / "page.html"
    os.mkfifo(fifo)
    for out in (fifo, "/dev/null"):
        r = cli(["explore", tmp_path / "no-checkpoint", "--prompt", "R", "--out", out], cwd=tmp_path, timeout=30)
        one_line_error(r, r"--out .* is not a regular file \(a FIFO, a device or a socket\); give a file name")
    assert fifo.is_fifo()
