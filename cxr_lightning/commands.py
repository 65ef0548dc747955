"""The console scripts (``cxr-predict``, ``cxr-report``, ...): each runs a module's ``main``
through :func:`cxr_lightning.errors.run_command` (user errors as one line, exit status 2).
``cxr-train`` is :func:`cxr_lightning.train.main` itself (Hydra's own command line)."""

from __future__ import annotations

import importlib
import os
import re
import sys

from cxr_lightning.errors import run_command


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


def program_name(module: str) -> str:
    """The command as the user typed it: the console script's name, else ``python -m module``."""
    typed = os.path.basename(sys.argv[0])
    return typed if typed.startswith("cxr-") else f"python -m {module}"


def plain(text: str) -> str:
    """A docstring's text for ``--help``: reST roles and literal markup removed."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
