"""User-facing errors.

Anything a user can cause with bad input (a missing file, a corrupt checkpoint, an unknown
character, a bad flag) raises `NumformerError` with a one-line message. The CLI prints that line
and exits non-zero; it never shows a traceback for these. Programming errors (a wrong shape passed
to an op) stay ordinary Python exceptions such as ValueError.
"""


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
