"""Files that are whole or absent, that check themselves when read, and one writer at a time.

- :func:`write_atomic` / :func:`atomic_path`: a file is written under a ``.partial`` name and
  renamed into place; on any failure (a full disk included) the partial file is removed, so a
  failed write leaves neither a half file nor litter that keeps the disk full.
- :func:`file_sha256`: the checksum a writer records and a reader compares (cache shards).
- :func:`verify_zip`: ``torch.save`` files (``model.pt``, Lightning checkpoints) are zip archives
  whose every member carries the CRC-32 computed when it was written; ``torch.load`` does not
  check them, this does (a flipped bit or a truncated file is refused, naming the file).
- :func:`exclusive_lock`: an advisory ``flock`` on a lock file, blocking or refused at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxr_lightning.errors import BusyError, CorruptFileError

PARTIAL_SUFFIX = ".partial"
_CHUNK = 16 << 20


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the ``.partial`` path to write ``path`` through; renamed into place on success,
    deleted on any failure."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; no partial file survives a failure."""
    with atomic_path(path) as partial:
        partial.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 16 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_zip(path: str | Path, fix: str, *, required: bool = True) -> None:
    """Check every member of a zip archive (a ``torch.save`` file) against the CRC-32 recorded
    when it was written; :class:`CorruptFileError` naming the file and ``fix`` otherwise.
    ``required=False``: a file that is no complete zip archive (another format, or truncated)
    is left to its reader to refuse."""
    if not required and not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CorruptFileError(f"{path} is damaged or truncated ({error}): {fix}") from error
    if bad is not None:
        raise CorruptFileError(f"{path} is damaged: its member {bad} does not match the "
                               f"checksum recorded when it was written: {fix}")


@contextmanager
def exclusive_lock(lock_file: str | Path, *, wait: bool = True, holder: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) while in the block.

    ``wait=False``: :class:`BusyError` at once when another process holds it; ``holder``
    describes what the lock guards, for that message.
    """
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as error:
            raise BusyError(f"{holder or lock_file} is in use by another process (it holds "
                            f"{lock_file}): wait for it to end, or choose another "
                            "directory") from error
        yield
