"""What to predict on: files, folders (recursive), glob patterns and manifest CSVs -> paths.

* an existing path is taken literally, before any pattern reading (``[a].dcm`` is that file);
* a folder: every file under it (recursively, not following directory symlinks, so a link
  loop cannot repeat files) whose suffix is a supported image type
  (:data:`~cxr_lightning.data.images.SUPPORTED_SUFFIXES`, case-insensitive), sorted;
  a broken symlink among them is kept (it becomes a failed row);
* a glob pattern (``*``, ``?`` or ``[`` in it; ``**`` recurses): its matches, sorted;
* a ``.csv`` file: a manifest whose ``path`` column lists the images, relative paths taken
  from the CSV's folder, in the CSV's order;
* anything else: that file, kept as given even when it does not exist or is not an image,
  so that prediction reports it as a failed row instead of dropping it.

A folder without images, a pattern that matches nothing and a manifest without a ``path``
column are errors (a typo, not a bad image). Paths naming the same file (after resolving
symlinks and ``..``) are predicted once, under the first name given.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cxr_lightning.data.images import SUPPORTED_SUFFIXES
from cxr_lightning.data.tables import Column, read_table
from cxr_lightning.errors import BadValueError

log = logging.getLogger(__name__)

MANIFEST_PATH_COLUMN = "path"
_GLOB_CHARACTERS = frozenset("*?[")


def collect_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image paths named by one input or a list of them, in order, each once."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not items:
        raise BadValueError("inputs is empty: give files, folders, glob patterns or a manifest CSV")
    paths = [path for item in items for path in _expand(str(item))]
    unique = list(_first_name_of_each_file(paths))
    if len(unique) < len(paths):
        log.info("%d input paths were named more than once; each is predicted once",
                 len(paths) - len(unique))
    return unique


def _expand(item: str) -> list[Path]:
    path = Path(item).expanduser()
    if _GLOB_CHARACTERS & set(item) and not os.path.lexists(path):
        found = [Path(p) for p in glob.glob(item, recursive=True)
                 if Path(p).is_file() or Path(p).is_symlink()]
        # the shortest name of each file: ``**`` follows directory links, loops included
        matches = sorted(_first_name_of_each_file(sorted(found, key=lambda p: len(p.parts))))
        if not matches:
            raise BadValueError(f"inputs={item!r}: the pattern matches no file")
        return matches
    if path.is_dir():
        return _images_under(path)
    if path.suffix.lower() == ".csv" and path.is_file():
        return _manifest_paths(path)
    return [path]


def _first_name_of_each_file(paths: list[Path]) -> list[Path]:
    """``paths`` without those naming a file named before (symlinks and ``..`` resolved)."""
    first: dict[Path, Path] = {}
    for path in paths:
        first.setdefault(path.resolve(), path)
    return list(first.values())


def _images_under(folder: Path) -> list[Path]:
    images = sorted(Path(parent, name) for parent, _, names in os.walk(folder)
                    for name in names if Path(name).suffix.lower() in SUPPORTED_SUFFIXES)
    if not images:
        raise BadValueError(f"inputs={str(folder)!r}: the folder holds no "
                            f"{'/'.join(SUPPORTED_SUFFIXES)} file")
    return images


def _manifest_paths(manifest: Path) -> list[Path]:
    listed = read_table(manifest, {MANIFEST_PATH_COLUMN: Column("str")})[MANIFEST_PATH_COLUMN]
    return [Path(p) if Path(p).is_absolute() else manifest.parent / p for p in listed]
