"""What `numformer explore --out` may write over, and how it writes: never through a link, never
over a file it cannot prove it wrote, never into something that is not a regular file."""

import os

from numformer.cli import main

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
