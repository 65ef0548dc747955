"""The console scripts (``cxr-predict``, ``cxr-report``, ...): each runs a module's ``main``
through :func:`cxr_lightning.errors.run_command` (user errors as one line, exit status 2).
``cxr-train`` is :func:`cxr_lightning.train.main` itself (Hydra's own command line)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence

from cxr_lightning.errors import BadValueError, run_command


def _run(module: str) -> int:
    return run_command(importlib.import_module(module).main)


def predict() -> int:
    """``cxr-predict``: ``python -m cxr_lightning.predict``."""
    return _run("cxr_lightning.predict")


def export() -> int:
    """``cxr-export``: ``python -m cxr_lightning.export``."""
    return _run("cxr_lightning.export")


def report() -> int:
    """``cxr-report``: ``python -m cxr_lightning.report``."""
    return _run("cxr_lightning.report.__main__")


def cache() -> int:
    """``cxr-cache``: ``python -m cxr_lightning.data.cache``."""
    return _run("cxr_lightning.data.cache")


def cohort() -> int:
    """``cxr-cohort``: ``python -m cxr_lightning.data.cohort``."""
    return _run("cxr_lightning.data.cohort")


def sample() -> int:
    """``cxr-sample``: ``python -m cxr_lightning.data.sample``."""
    return _run("cxr_lightning.data.sample.__main__")


def study() -> int:
    """``cxr-study``: ``python -m cxr_lightning.study``."""
    return _run("cxr_lightning.study.__main__")


def program_name(module: str) -> str:
    """The command as the user typed it: the console script's name, else ``python -m module``."""
    typed = os.path.basename(sys.argv[0])
    return typed if typed.startswith("cxr-") else f"python -m {module}"


def plain(text: str) -> str:
    """A docstring's text for ``--help``: reST roles, literal and bold markup removed. Bold is
    a ``**word**`` pair only: a lone ``**`` (the glob ``'scans/**/*.dcm'``) stays."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
    return re.sub(r"\*\*(\S[^*]*?)\*\*", r"\1", text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with the description's line breaks kept and each option's default shown
    (unless it is required, a switch, or has none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and not action.required
                and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text


def command_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of ``module``'s command: its program name as typed, the module
    docstring ``doc`` (without reST markup) as description, :class:`HelpFormatter`."""
    return argparse.ArgumentParser(prog=program_name(module), description=plain(doc),
                                   formatter_class=HelpFormatter)


def refuse_key_value(argv: Sequence[str], keys: Sequence[str]) -> None:
    """The command once took ``key=value`` arguments: say how to write one as a flag now."""
    for arg in argv:
        key, equals, value = arg.partition("=")
        if equals and key in keys and not os.path.lexists(arg):
            raise BadValueError(f"{arg}: options are flags now, e.g. "
                                f"--{key.replace('_', '-')} {value} (see --help)")
