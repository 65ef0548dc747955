"""Which code made an artefact: the package version and, from a git checkout, its commit."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

_REPOSITORY = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The package version and, when run from a git checkout, its commit and dirty flag."""
    try:
        version = package_metadata.version("cxr-lightning")
    except package_metadata.PackageNotFoundError:
        version = None
    return {"package": version, **_git_state()}


def _git_state() -> dict[str, Any]:
    """``git_commit`` (None outside a checkout or without git) and ``git_dirty``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPOSITORY, text=True,
                                capture_output=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=_REPOSITORY, text=True, capture_output=True, check=True,
                                timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}
