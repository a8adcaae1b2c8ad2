"""The project's own error types. The CLI turns these (and only these) into one line on
stderr and exit code 2; anything else is a programming error and keeps its traceback.

Each message names the file, field or argument and says what was expected.
"""

from __future__ import annotations


class MsakitError(Exception):
    """Base class of every user-facing msakit error."""


class DataError(MsakitError, ValueError):
    """A dataset file or array is malformed, unsafe, or inconsistent (names the file/field)."""


class ConfigError(MsakitError, ValueError):
    """A config value or command-line option is out of range or of the wrong type."""


class RunError(MsakitError, RuntimeError):
    """A run folder cannot be used as asked: locked, resumed with another config, tampered
    checkpoint, dataset changed since training, ..."""


class MissingDataError(MsakitError, FileNotFoundError):
    """A dataset, run folder or file that was asked for does not exist."""


class UnknownNameError(MsakitError, KeyError):
    """A model, dataset, protocol or other registered name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``str(e)`` cut to ``limit`` characters, or the exception's
    type name when it has no message (for one-line errors that quote a library's reason)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]
