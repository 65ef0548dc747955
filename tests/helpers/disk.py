"""A full disk for tests: a small tmpfs where one can be mounted, and filling it."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_disk(mount: Path, size: str = "1m") -> Iterator[Path | None]:
    """A ``size`` tmpfs mounted at ``mount`` (created) where one can be mounted (as root, in a
    container that allows it), else ``None``: the caller then simulates a full disk."""
    mount.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    """Write into ``directory`` until its file system is full."""
    with (directory / "filler").open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"x" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def make_full(disk: Path | None, monkeypatch) -> None:
    """Fill ``disk`` (a :func:`small_disk`), or where none could be mounted make every new
    write through ``Path.write_text``/``write_bytes`` fail as on a full disk."""
    if disk is not None:
        fill(disk)
        return

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    monkeypatch.setattr(Path, "write_bytes", full)


def failing_on_a_full_disk() -> OSError:
    """The error a job that ran out of disk space fails with, raised (it has a traceback)."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as error:
        return error
