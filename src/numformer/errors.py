"""numformer's errors, and the one rule they follow.

The rule. A mistake of the user's is one line that names the flag or the file; a bug in numformer
is a traceback.

- The user's mistakes are bad input and bad files: a flag or setting out of range, a path that
  does not exist or is not what it should be, a corrupt or hand-edited checkpoint, a corpus or
  prompt numformer cannot use, a model too big for the machine. They raise a `NumformerError`
  subclass whose message is one line naming the flag (`--n_layer`) or the file; the CLI prints
  that line and exits with the error's `exit_code`, without a traceback.
- Everything else is a bug in numformer and stays an ordinary exception (ValueError, TypeError,
  RuntimeError, ...), traceback and all, so that it is seen and fixed. A wrong shape handed to an
  op is the calling code's bug: ValueError.
- So code that reads a flag or a file checks what it read and raises the one-line error itself.
  It never wraps numformer's own code in `except Exception` or `except (TypeError, ValueError)`
  to turn whatever comes out into a user error: that would report numformer's bugs as the user's
  mistakes. An exception is caught only where nothing but the input can have caused it: an
  OSError (the machine's: a full disk, a read-only folder; `os_error_line` says it in one line),
  or a parser's error about the very text or value it was given from the user's file or flag.

The helpers below make the lines that more than one place says (the library never imports them
from numformer.cli; the CLI imports them from here).
"""

from __future__ import annotations

import os
import re


class NumformerError(Exception):
    """A problem with the user's input, reported as one line with exit status `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(NumformerError):
    """A bad command-line value or name (exit status 2, like argparse)."""

    exit_code = 2


class CheckpointError(NumformerError):
    """A checkpoint that is missing, truncated, tampered with or inconsistent."""


class DataError(NumformerError):
    """A corpus or prompt that cannot be used (missing, empty, not UTF-8, too short, unknown char)."""


class MemoryLimitError(NumformerError):
    """A model, batch or corpus that would need more memory than the machine has available."""


class NonFiniteLoss(NumformerError):
    """Training diverged: the loss or the gradient norm became NaN or infinite (a learning rate
    too high for the run, say). The last good checkpoint is kept."""


def os_error_line(e: OSError) -> str:
    """An OSError as one line: what failed, on which path."""
    what = e.strerror or type(e).__name__
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"{paths}: {what}" if paths else what


def check_text(value: str, what: str) -> str:
    """`value`, or UsageError if it holds bytes that are not UTF-8 (Python hands such command-line
    bytes over as lone surrogates, which no tokenizer can take)."""
    for i, ch in enumerate(value):
        if "\udc80" <= ch <= "\udcff":
            raise UsageError(f"{what} is not valid UTF-8 text (byte 0x{ord(ch) - 0xdc00:02x} at character {i})")
        if "\ud800" <= ch <= "\udfff":
            raise UsageError(f"{what} holds a lone surrogate U+{ord(ch):04X} at character {i}, which is not text")
    return value


def check_path(value: str, flag: str) -> str:
    """`value`, or UsageError if the path holds bytes that are not UTF-8 (surrogate escapes): a run
    records the paths it is given in its checkpoint's config.json, which is UTF-8."""
    try:
        return check_text(value, flag)
    except UsageError as e:
        try:
            shown = os.fsencode(value).decode("utf-8", "backslashreplace")      # b"caf\xe9" -> "caf\\xe9"
        except UnicodeEncodeError:
            shown = value.encode("utf-8", "backslashreplace").decode("ascii")
        raise UsageError(f"{flag} {shown}: the path is not UTF-8 ({str(e).split('(', 1)[-1]}; a run records its "
                         f"paths in config.json, which holds UTF-8 only: rename it or choose another path") from None


def looks_like_hub_name(name: str) -> bool:
    """True for a name such as `gpt2` or `sentence-transformers/all-MiniLM-L6-v2` that is not a
    path here: what from_pretrained would fetch from the Hugging Face Hub."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name)) and not os.path.lexists(name)


def hub_hint(flag: str, name: str, kind: str) -> str:
    """The one line for a Hub name given where numformer needs a local folder. kind: "causal" (a
    Hugging Face GPT-2, Llama, Mistral or Qwen2 folder) or "sentence" (a sentence-transformers folder)."""
    local = name.rsplit("/", 1)[-1] + "-local"
    if kind == "causal":
        save = (f"with transformers, AutoModelForCausalLM.from_pretrained('{name}').save_pretrained('{local}') and "
                f"the same with AutoTokenizer")
    else:
        save = f"with sentence-transformers, SentenceTransformer('{name}').save_pretrained('{local}')"
    return (f"{flag} {name}: no such folder; numformer reaches no hub and reads only local folders: save the "
            f"model to one first, in Python {save}, then give {flag} {local}")
