"""User errors: a mistake in what was asked for (a path, a file, an option, a checkpoint).

A command reports one as a single ``error: ...`` line and exits with :data:`EXIT_USER_ERROR`,
without a traceback; ``HYDRA_FULL_ERROR=1`` (or ``CXR_DEBUG=1``) shows the traceback instead.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USER_ERROR = 2
DEBUG_VARIABLES = ("HYDRA_FULL_ERROR", "CXR_DEBUG")


class UserError(Exception):
    """An error the user can fix; its message says what is wrong, where, and the fix."""


def debugging() -> bool:
    """Whether user errors should show their traceback (HYDRA_FULL_ERROR=1, CXR_DEBUG=1)."""
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_VARIABLES)


def report(error: BaseException) -> None:
    """Write ``error: <message>`` (one line per line of the message) to stderr."""
    sys.stderr.write(f"error: {error}\n")


def run_command(main: Callable[[Sequence[str] | None], Any],
                argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main``; its exit status (0, or :data:`EXIT_USER_ERROR` on a user
    error, which is reported without a traceback unless :func:`debugging`)."""
    try:
        main(argv)
    except UserError as error:
        if debugging():
            raise
        report(error)
        return EXIT_USER_ERROR
    return 0


class BadValueError(UserError, ValueError):
    """A user error that is also a :class:`ValueError` (an argument's value is unusable)."""


class MissingFileError(UserError, FileNotFoundError):
    """A user error that is also a :class:`FileNotFoundError` (a path given names no file)."""


class ModelMismatchError(BadValueError):
    """A saved model is not what was asked for, or cannot be rebuilt by this code."""


class CorruptFileError(BadValueError):
    """A file fails its integrity check (a checksum or a count recorded when it was written)."""


class BusyError(UserError):
    """A directory is being written by another process (its lock is held)."""
