"""Manifest -> resized 8-bit image cache in fixed-size shards, built once and streamed always.

Layout of a cache directory (``{cache_dir}/{source}-{size}px-{key}``, ``key`` hashing the
preprocessing parameters and the image list, so a changed parameter means a new directory)::

    spec.json                  CacheSpec (the preprocessing's square parameters: size, resize
                               policy, interpolation, histogram equalisation; shard size, format
                               version) + the image-list hash + image and shard counts + the
                               resolved source root
    shard-00000.npy            uint8 (n, S, S), n = shard_size except in the last shard
    shard-00000.index.csv      image_id, path, size and mtime_ns of the file of each row of the
                               shard, in row order (-1 for a file that was missing)
    shard-00000.failures.csv   image_id, path, reason of the images that could not be decoded
    shard-00000.sha256         the SHA-256 of the shard's three files (``sha256sum -c`` reads it)
    ...
    COMPLETE                   written last, once every shard exists

The manifest is sorted by ``image_id`` and shard ``k`` holds its rows ``[k*n, (k+1)*n)``, so a
shard's contents depend only on the spec and the image list: a rebuild is byte-identical and
shards can be built on different machines (``--shard i/N``, under the same root path) and copied
together. An image that fails to decode, for whatever reason, keeps its row (all zeros) and is
listed in the shard's failures; readers leave it out. A build in which more than
``max_failed_fraction`` (default 5%) of the images failed ends with :class:`CacheBuildError`
instead of completing.

The cache knows what it was built from: a cache of another root is refused
(:class:`CacheSpecMismatchError`), and a shard one of whose files changed size or mtime since
it was built (or appeared, or vanished) is rebuilt before the cache is used again.
``--retry-failures`` (``retry_failures=True``) also rebuilds every shard holding a failure.

Each shard file is written under a ``.partial`` name and renamed (the ``.npy`` last, so
its presence means the shard is complete); the checksums of its files are recorded as it is
written. Before a cache is used every shard is checked once per process (the counts of its
index, its array and the spec must agree, and its files must match their checksums): a damaged
shard is rebuilt by :func:`build_image_cache` and the CLI, with a warning naming it, and refused
by :func:`open_image_cache` (:class:`CacheIntegrityError`); a cache opened by URL checks each
shard when it is first fetched. a build that is killed resumes with the shards that
are missing and never rewrites a complete one. Writes hold an exclusive ``flock`` on
``.lock``, so builders running at once on one directory (parallel jobs, ``--shard`` runs on a
shared file system) never interleave; the later one finds the shard done and skips it.

Readers (:func:`open_image_cache`) memory-map every shard. The cache is map-style: under DDP,
Lightning's ``DistributedSampler`` and the DataLoader's workers split it without any help.

Build ahead of training (the DataModule finds the same keyed directory under ``data.cache_dir``)::

    python -m cxr_lightning.data.cache --root $MIMIC_CXR_ROOT --out data/cache --size 512 \
        [--resize pad] [--workers N] [--shard i/N] [--source mimic_cxr] [--labeler chexpert]
        [--retry-failures] [--max-failed-fraction 0.05] [--max-pixels 60000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxr_lightning.commands import HelpFormatter, program_name
from cxr_lightning.data.images import MAX_PIXELS
from cxr_lightning.data.preprocess import PREPROCESSING_VERSION, RESIZE_POLICIES, Preprocessing
from cxr_lightning.errors import CorruptFileError, run_command
from cxr_lightning.integrity import atomic_path, exclusive_lock, file_sha256, write_atomic

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = PREPROCESSING_VERSION  # one number: bump it for decoding or layout
DEFAULT_SHARD_SIZE = 1024
COMPLETE_MARKER = "COMPLETE"
#: Default largest fraction of a cache's images that may fail before the build is an error.
MAX_FAILED_FRACTION = 0.05
_STAT_COLUMNS = ("size", "mtime_ns")


@dataclass(frozen=True)
class CacheSpec:
    """What defines a cache's contents: the preprocessing that makes its squares (of which only
    the :data:`~cxr_lightning.data.preprocess.SQUARE_FIELDS` count, not the normalisation)
    and how they are stored."""

    preprocessing: Preprocessing
    shard_size: int = DEFAULT_SHARD_SIZE
    format_version: int = CACHE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive: {self}")

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def record(self) -> dict:
        """The spec as spec.json stores it and the cache key hashes it (flat, as in format 3)."""
        return {**self.preprocessing.square_record(), "shard_size": self.shard_size,
                "format_version": self.format_version}


class CacheSpecMismatchError(ValueError):
    """A cache directory holds images made with other parameters than those requested."""


class CacheBuildError(RuntimeError):
    """Too many of a cache's images failed to decode for the cache to be used."""


class CacheIntegrityError(CorruptFileError):
    """A shard's files disagree with their counts or checksums."""


class ShardedImages:
    """The shards of a cache as one read-only (N, S, S) uint8 sequence, memory-mapped lazily.

    Pickles as its file paths (not the pixels), so DataLoader workers started with ``spawn``
    map the shards themselves.
    """

    def __init__(self, paths: list[str], shard_size: int, image_size: int, length: int,
                 local_copies: str | None = None,
                 checksums: list[str | None] | None = None) -> None:
        self.paths = paths
        self.shard_size = shard_size
        self.shape = (length, image_size, image_size)
        self.local_copies = local_copies
        self.checksums = checksums
        """Per shard, the SHA-256 its fetched copy must have (caches opened by URL; a local
        cache is checked whole when opened)."""
        self._maps: list[np.ndarray | None] = [None] * len(paths)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"image {index} out of range for a cache of {self.shape[0]}")
        shard, row = divmod(int(index), self.shard_size)
        images = self._maps[shard]
        if images is None:
            images = self._maps[shard] = np.load(self._local_path(shard), mmap_mode="r")
        return images[row]

    def _local_path(self, shard: int) -> str:
        """A local file of the shard: itself, or for a URL a copy fetched on first use."""
        path = self.paths[shard]
        if not is_url(path):
            return path
        local = fsspec.open_local(f"filecache::{path}",
                                  filecache={"cache_storage": self.local_copies})
        expected = self.checksums[shard] if self.checksums else None
        if expected is not None and file_sha256(local) != expected:
            raise CacheIntegrityError(
                f"{path} (fetched to {local}) does not match its checksum in its .sha256: "
                "delete the local copy and rebuild that shard where the cache was built")
        return local

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": [None] * len(self.paths)}


@dataclass
class ImageCache:
    """A complete cache: ``images[row_of[image_id]]`` is an image; failed images are absent."""

    directory: Path | str
    images: ShardedImages
    row_of: dict[str, int]
    skipped: pd.DataFrame = field(repr=False)

    def get(self, image_id: str) -> np.ndarray:
        """The cached (S, S) uint8 image of ``image_id`` (read-only)."""
        return self.images[self.row_of[image_id]]


@dataclass
class BuildSummary:
    """What one build call did (of the shards it was asked for)."""

    directory: Path
    shards_total: int
    shards_built: int
    images_built: int
    images_failed: int
    complete: bool


def image_list_hash(manifest: pd.DataFrame) -> str:
    """SHA-256 of the sorted (image_id, path) pairs: the identity of the image list."""
    digest = hashlib.sha256()
    for image_id, path in sorted(zip(manifest["image_id"], manifest["path"], strict=True)):
        digest.update(f"{image_id}\t{path}\n".encode())
    return digest.hexdigest()


def cache_directory(manifest: pd.DataFrame, cache_dir: Path, spec: CacheSpec) -> Path:
    """The directory a cache of these images under this spec lives in."""
    digest = hashlib.sha256(json.dumps(spec.record(), sort_keys=True).encode())
    digest.update(image_list_hash(manifest).encode())
    source = str(manifest["source"].iloc[0]) if len(manifest) else "empty"
    return Path(cache_dir) / f"{source}-{spec.image_size}px-{digest.hexdigest()[:12]}"


def build_image_cache(
    manifest: pd.DataFrame,
    source_root: str | Path,
    cache_dir: str | Path,
    spec: CacheSpec,
    num_workers: int = 2,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
) -> ImageCache:
    """Return the cache of the manifest's images, building (or finishing) it first if needed.

    Images that fail to decode are recorded in the shards' failures with the reason and left
    out; the build goes on (:class:`CacheBuildError` when more than ``max_failed_fraction``
    fail). A complete cache of another root is refused; one whose files changed since is
    rebuilt where they changed, and so is a damaged shard (counts or checksums that disagree).
    """
    directory = cache_directory(manifest, Path(cache_dir), spec)
    root = _resolved(source_root)
    if (directory / COMPLETE_MARKER).is_file():
        _check_spec(directory, {"spec": spec.record(), "source_root": root})
        damaged = _damaged_shards(directory)  # first: a damaged index defeats the stale check
        if damaged:
            _invalidate(directory, damaged, "damaged")
        elif not _stale_shards(directory, root):
            log.info("Using the image cache %s", directory)
            return _open(directory, spec)
    else:
        covering = _covering_cache(manifest, directory, spec, root)
        if covering is not None:
            return covering
    build_shards(manifest, source_root, directory, spec, num_workers,
                 max_failed_fraction=max_failed_fraction)
    return _open(directory, spec)  # its shards were checked, or built, just now


def _covering_cache(manifest: pd.DataFrame, directory: Path, spec: CacheSpec,
                    root: str) -> ImageCache | None:
    """A complete, current sibling cache of the same source, root and spec holding every
    manifest image.

    The CLI caches every labelled image of a source once; each cohort (label policy, views,
    split) then reads its subset from that cache instead of decoding its own.
    """
    prefix = directory.name.rsplit("-", 1)[0]
    wanted = set(manifest["image_id"])
    for candidate in sorted(directory.parent.glob(f"{prefix}-*/{COMPLETE_MARKER}")):
        record = json.loads((candidate.parent / "spec.json").read_text())
        if (record["spec"] != spec.record() or record.get("source_root") != root
                or record["n_images"] < len(wanted)):
            continue
        if _stale_shards(candidate.parent, root) or _damaged_shards(candidate.parent):
            log.warning("Not using the image cache %s: files changed since it was built, or "
                        "it is damaged", candidate.parent)
            continue
        cache = _open(candidate.parent, spec)
        held = cache.row_of.keys() | set(cache.skipped["image_id"])
        if wanted <= held:
            log.info("Using the image cache %s (%d images), which holds all %d of this cohort",
                     cache.directory, record["n_images"], len(wanted))
            return cache
    return None


def build_shards(
    manifest: pd.DataFrame,
    source_root: str | Path,
    directory: str | Path,
    spec: CacheSpec,
    num_workers: int = 2,
    part: tuple[int, int] = (0, 1),
    *,
    retry_failures: bool = False,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
    max_pixels: int = MAX_PIXELS,
) -> BuildSummary:
    """Build the missing shards ``k`` with ``k % part[1] == part[0]`` into ``directory``.

    Shards of the part whose files changed since they were built are rebuilt, and with
    ``retry_failures`` so is every shard of the part holding a failure. Writes ``COMPLETE``
    when every shard exists afterwards (so the last of several ``--shard`` runs on a shared
    directory, or a plain run after copying them together, completes it), unless more than
    ``max_failed_fraction`` of all the cache's images failed: then :class:`CacheBuildError`.
    Images over ``max_pixels`` pixels are refused (a recorded failure) before decoding.
    """
    directory = Path(directory)
    index, of = part
    if not 0 <= index < of:
        raise ValueError(f"shard part {index}/{of}: expected 0 <= i < N")
    if manifest.empty or manifest["image_id"].duplicated().any():
        raise ValueError("the manifest to cache must hold images, each image_id once")
    if not 0 <= max_failed_fraction <= 1:
        raise ValueError(f"max_failed_fraction={max_failed_fraction}: expected 0 to 1")
    ordered = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    root = _resolved(source_root)
    stored = _spec_record(spec, ordered, root)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory):
        if (directory / "spec.json").is_file():
            _check_spec(directory, stored)
        else:
            write_atomic(directory / "spec.json", json.dumps(stored, indent=2, sort_keys=True))
    n_shards = stored["n_shards"]
    mine = range(index, n_shards, of)
    _invalidate(directory, _damaged_shards(directory, mine), "damaged")
    _invalidate(directory, _stale_shards(directory, root, mine), "files changed since built")
    if retry_failures:
        _invalidate(directory, _shards_with_failures(directory, mine), "--retry-failures")
    todo = [k for k in mine if not _shard_path(directory, k).is_file()]
    rows = {k: ordered.iloc[k * spec.shard_size:(k + 1) * spec.shard_size] for k in todo}
    stats = {k: _file_stats(root, rows[k]["path"]) for k in todo}
    tasks = [(str(Path(root) / path), spec, max_pixels) for k in todo for path in rows[k]["path"]]
    results = _decode_all(tasks, num_workers)
    failed = 0
    with tqdm(total=len(tasks), unit="img", desc=f"Caching {len(todo)} shards at "
              f"{spec.image_size}px") as progress:
        for k in todo:
            failed += _write_shard(directory, k, rows[k].assign(**stats[k]), spec, results,
                                   progress)
    with _exclusive(directory):
        complete = all(_shard_path(directory, k).is_file() for k in range(n_shards))
        if complete:
            _check_failures(directory, n_shards, stored["n_images"], max_failed_fraction)
            write_atomic(directory / COMPLETE_MARKER, f"{n_shards} shards\n")
    summary = BuildSummary(directory, n_shards, len(todo), len(tasks), failed, complete)
    if failed:
        log.warning("%d of %d images could not be decoded and are skipped; reasons in "
                    "%s/shard-*.failures.csv", failed, len(tasks), directory)
    log.info("Image cache %s: built %d of %d shards (%d images, %d skipped)%s", directory,
             len(todo), n_shards, len(tasks) - failed, failed,
             "; complete" if complete else "; incomplete (other shards still missing)")
    return summary


def is_url(location: str | Path) -> bool:
    """Whether a cache location is an fsspec URL (``s3://``, ``gs://``, ``memory://`` ...)."""
    return "://" in str(location)


def open_image_cache(location: str | Path, spec: CacheSpec,
                     local_copies: str | Path | None = None) -> ImageCache:
    """Open a complete cache built with ``spec``; its shards are memory-mapped read-only.

    ``location`` is a directory or the URL of one in object storage (any fsspec protocol whose
    package is installed, e.g. ``s3://bucket/cache/mimic_cxr-512px-...`` with s3fs): its index
    is read at once and each shard is copied into ``local_copies`` the first time an image of it
    is read, then memory-mapped. Raises :class:`CacheSpecMismatchError` when the cache was built
    with other parameters, ``FileNotFoundError`` when it is incomplete and
    :class:`CacheIntegrityError` when a shard of a local cache is damaged.
    """
    if is_url(location):
        if local_copies is None:
            raise ValueError(f"opening {location} needs a local directory for its shards")
        return _open(str(location).rstrip("/"), spec, str(local_copies))
    directory = Path(location)
    _check_spec(directory, {"spec": spec.record()})
    problems = _shard_problems(directory)
    if problems:
        k, problem = next(iter(problems.items()))
        raise CacheIntegrityError(
            f"image cache {directory}: {_shard_path(directory, k).name} is damaged "
            f"({problem}): build the cache again (cxr-cache, or a training run on its "
            "source), which rebuilds the damaged shards")
    return _open(directory, spec)


def _open(directory: str | Path, spec: CacheSpec, local: str | None = None) -> ImageCache:
    """The cache at ``directory`` (checked by the caller; a URL's shards check themselves when
    fetched into ``local``)."""
    record = _check_spec(directory, {"spec": spec.record()})
    if not _exists(_member(directory, COMPLETE_MARKER)):
        raise FileNotFoundError(f"image cache {directory} is incomplete (no {COMPLETE_MARKER}): "
                                "run the build again, it resumes with the missing shards")
    n_shards = record["n_shards"]
    checksums = None if local is None else [
        _recorded_checksums(directory, k).get(f"shard-{k:05d}.npy") for k in range(n_shards)]
    ids = [pd.read_csv(_shard_path(directory, k, ".index.csv"), dtype={"image_id": str})
           for k in range(n_shards)]
    for k, index in enumerate(ids):
        if len(index) != _rows_in_shard(record, k):
            raise CacheIntegrityError(
                f"{_shard_path(directory, k, '.index.csv')} lists {len(index)} rows, but the "
                f"shard holds {_rows_in_shard(record, k)}: rebuild the cache")
    failures = [pd.read_csv(_shard_path(directory, k, ".failures.csv"), dtype={"image_id": str})
                for k in range(n_shards)]
    skipped = pd.concat(failures, ignore_index=True)
    failed = set(skipped["image_id"])
    # a row is addressed by its shard and its place in that shard's index, never by a count
    # over all indexes, so one index that disagrees cannot shift the images of the next shards
    row_of = {image_id: k * spec.shard_size + row for k, index in enumerate(ids)
              for row, image_id in enumerate(index["image_id"]) if image_id not in failed}
    paths = [str(_shard_path(directory, k)) for k in range(n_shards)]
    images = ShardedImages(paths, spec.shard_size, spec.image_size, record["n_images"], local,
                           checksums)
    return ImageCache(directory, images, row_of, skipped)


def _member(directory: str | Path, name: str) -> str | Path:
    """``directory/name`` for a local directory (a Path) or a URL (a string)."""
    return f"{directory}/{name}" if isinstance(directory, str) else directory / name


def _exists(location: str | Path) -> bool:
    if isinstance(location, Path):
        return location.is_file()
    filesystem, path = fsspec.core.url_to_fs(location)
    return filesystem.isfile(path)


def _read_text(location: str | Path) -> str:
    if isinstance(location, Path):
        return location.read_text()
    with fsspec.open(location, "rt") as handle:
        return handle.read()


def _spec_record(spec: CacheSpec, ordered: pd.DataFrame, root: str) -> dict:
    n = len(ordered)
    return {"spec": spec.record(), "image_list_hash": image_list_hash(ordered), "n_images": n,
            "n_shards": -(-n // spec.shard_size), "source_root": root}


def _resolved(source_root: str | Path) -> str:
    """The absolute, symlink-free source root a cache records."""
    return str(Path(source_root).expanduser().resolve())


def _file_stats(root: str, paths: pd.Series) -> dict[str, list[int]]:
    """``size`` and ``mtime_ns`` of each file (``-1`` for a missing one)."""
    stats: dict[str, list[int]] = {column: [] for column in _STAT_COLUMNS}
    for path in paths:
        try:
            stat = os.stat(Path(root) / path)
        except OSError:
            size = mtime = -1
        else:
            size, mtime = stat.st_size, stat.st_mtime_ns
        stats["size"].append(size)
        stats["mtime_ns"].append(mtime)
    return stats


def _stale_shards(directory: Path, root: str, shards: Iterable[int] | None = None) -> list[int]:
    """The built shards (of ``shards``, default all) one of whose files changed size or mtime,
    appeared or vanished since it was built; a warning names the first changed file."""
    if shards is None:
        shards = range(json.loads((directory / "spec.json").read_text())["n_shards"])
    stale = []
    for k in shards:
        index_csv = _shard_path(directory, k, ".index.csv")
        if not _shard_path(directory, k).is_file() or not index_csv.is_file():
            continue
        index = pd.read_csv(index_csv, dtype={"image_id": str, "path": str})
        now = pd.DataFrame(_file_stats(root, index["path"]))
        changed = (now.to_numpy() != index[list(_STAT_COLUMNS)].to_numpy()).any(axis=1)
        if changed.any():
            stale.append(k)
            log.warning("Image cache %s, shard %d: %d file(s) changed since it was built (e.g. "
                        "%s); it is rebuilt", directory, k, int(changed.sum()),
                        index["path"][changed].iloc[0])
    return stale


def _rows_in_shard(record: dict, shard: int) -> int:
    """How many images shard ``shard`` of a cache (its spec.json record) holds."""
    size = record["spec"]["shard_size"]
    return max(0, min(size, record["n_images"] - shard * size))


_SHARD_FILES = (".npy", ".index.csv", ".failures.csv")
_CHECKSUM_SUFFIX = ".sha256"


def _recorded_checksums(directory: str | Path, shard: int) -> dict[str, str]:
    """``{file name: sha256}`` from the shard's ``.sha256`` (empty when it has none)."""
    location = _shard_path(directory, shard, _CHECKSUM_SUFFIX)
    if not _exists(location):
        return {}
    pairs = (line.split(maxsplit=1) for line in _read_text(location).splitlines() if line)
    return {name.strip(): digest for digest, name in pairs}


def _record_checksums(directory: Path, shard: int, files: dict[str, Path]) -> None:
    """Write the shard's ``.sha256`` (``sha256sum`` format) of ``{name: file}``."""
    write_atomic(_shard_path(directory, shard, _CHECKSUM_SUFFIX),
                 "".join(f"{file_sha256(path)}  {name}\n" for name, path in files.items()))


def _shard_problem(directory: Path, shard: int) -> str | None:
    """Why a built shard cannot be used (counts that disagree, a file that does not match its
    checksum), or ``None``. A shard built before checksums were recorded gets them now."""
    record = json.loads((directory / "spec.json").read_text())
    rows, size = _rows_in_shard(record, shard), record["spec"]["image_size"]
    files = {_shard_path(directory, shard, suffix).name: _shard_path(directory, shard, suffix)
             for suffix in _SHARD_FILES}
    try:
        listed = len(pd.read_csv(files[f"shard-{shard:05d}.index.csv"]))
    except (OSError, ValueError) as error:  # missing, empty or not a CSV
        return f"its index cannot be read ({error})"
    if listed != rows:
        return f"its index lists {listed} rows, the shard holds {rows}"
    try:
        shape = np.load(files[f"shard-{shard:05d}.npy"], mmap_mode="r").shape
    except (OSError, ValueError) as error:
        return f"its array cannot be read ({error})"
    if shape != (rows, size, size):
        return f"its array is {shape}, expected {(rows, size, size)}"
    recorded = _recorded_checksums(directory, shard)
    if not recorded:
        log.info("Image cache %s, shard %d: recording the checksums it was built without",
                 directory, shard)
        _record_checksums(directory, shard, files)
        return None
    for name, path in files.items():
        if recorded.get(name) != file_sha256(path):
            return f"{name} does not match its recorded checksum"
    return None


def _shard_problems(directory: Path, shards: Iterable[int] | None = None) -> dict[int, str]:
    """``{shard: problem}`` of the built shards (of ``shards``, default all) that fail
    :func:`_shard_problem`, checked on several cores at once (hashlib releases the GIL)."""
    if shards is None:
        shards = range(json.loads((directory / "spec.json").read_text())["n_shards"])
    built = [k for k in shards if _shard_path(directory, k).is_file()]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        problems = pool.map(lambda k: _shard_problem(directory, k), built)
        return {k: problem for k, problem in zip(built, problems, strict=True) if problem}


def _damaged_shards(directory: Path, shards: Iterable[int] | None = None) -> list[int]:
    """The shards :func:`_shard_problems` finds, each named in a warning."""
    problems = _shard_problems(directory, shards)
    for k, problem in problems.items():
        log.warning("Image cache %s: %s is damaged (%s); it is rebuilt", directory,
                    _shard_path(directory, k).name, problem)
    return list(problems)


def _shards_with_failures(directory: Path, shards: Iterable[int]) -> list[int]:
    """The built shards (of ``shards``) whose failures list is not empty."""
    return [k for k in shards if _shard_path(directory, k).is_file()
            and len(pd.read_csv(_shard_path(directory, k, ".failures.csv")))]


def _invalidate(directory: Path, shards: list[int], why: str) -> None:
    """Delete the shards' ``.npy`` (and ``COMPLETE``) so that the build makes them again."""
    if not shards:
        return
    log.info("Image cache %s: rebuilding %d shard(s) (%s)", directory, len(shards), why)
    with _exclusive(directory):
        (directory / COMPLETE_MARKER).unlink(missing_ok=True)
        for k in shards:
            _shard_path(directory, k).unlink(missing_ok=True)


def _check_failures(directory: Path, n_shards: int, n_images: int, max_fraction: float) -> None:
    """CacheBuildError when more than ``max_fraction`` of the cache's images failed."""
    failures = pd.concat([pd.read_csv(_shard_path(directory, k, ".failures.csv"))
                          for k in range(n_shards)], ignore_index=True)
    if len(failures) > max_fraction * n_images:
        examples = "; ".join(failures["reason"].head(3))
        raise CacheBuildError(
            f"image cache {directory}: {len(failures)} of {n_images} images could not be "
            f"decoded, more than max_failed_fraction={max_fraction}; the cache is not marked "
            f"complete. Reasons in {directory}/shard-*.failures.csv, e.g. {examples}. Fix or "
            "remove those files (a changed file's shard is rebuilt), or rerun with "
            "--retry-failures, or allow more with --max-failed-fraction")


def _check_spec(directory: str | Path, expected: dict) -> dict:
    """The stored spec record; an error naming both specs unless ``expected``'s keys match."""
    path = _member(directory, "spec.json")
    if not _exists(path):
        raise FileNotFoundError(f"{directory} is not an image cache (no spec.json)")
    try:
        stored = json.loads(_read_text(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheIntegrityError(f"{path} is damaged ({error}): delete {directory} and build "
                                  "the cache again") from error
    differing = {key for key in expected if stored.get(key) != expected[key]}
    if differing:
        raise CacheSpecMismatchError(
            f"image cache {directory} was built with {_describe(stored, differing)}, but "
            f"{_describe(expected, differing)} was requested: delete that directory (or choose "
            "another cache_dir) and build again; caches are never reused across parameters")
    return stored


def _describe(record: dict, keys: set[str]) -> str:
    return json.dumps({key: record.get(key) for key in sorted(keys)}, sort_keys=True)


def _shard_path(directory: str | Path, shard: int, suffix: str = ".npy") -> str | Path:
    return _member(directory, f"shard-{shard:05d}{suffix}")


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold the cache directory's write lock (released when the file closes)."""
    with exclusive_lock(directory / ".lock"):
        yield


def _write_shard(directory: Path, shard: int, rows: pd.DataFrame, spec: CacheSpec,
                 results: Iterator[np.ndarray | str], progress: tqdm) -> int:
    """Fill one shard from the next ``len(rows)`` results, write it atomically; count failures."""
    images = np.zeros((len(rows), spec.image_size, spec.image_size), dtype=np.uint8)
    failures = []
    for row, (image_id, path) in enumerate(zip(rows["image_id"], rows["path"], strict=True)):
        result = next(results)
        if isinstance(result, str):
            failures.append((image_id, path, result))
        else:
            images[row] = result
        progress.update()
    npy = _shard_path(directory, shard)
    with _exclusive(directory):
        if npy.is_file():  # written meanwhile by a concurrent builder: identical, keep it
            return len(failures)
        index = write_atomic(_shard_path(directory, shard, ".index.csv"),
                             rows[["image_id", "path", *_STAT_COLUMNS]].to_csv(index=False))
        failed = write_atomic(_shard_path(directory, shard, ".failures.csv"),
                              pd.DataFrame(failures, columns=["image_id", "path", "reason"]
                                           ).to_csv(index=False))
        with atomic_path(npy) as partial:  # renamed last: its presence marks the shard complete
            with partial.open("wb") as handle:
                np.save(handle, images)
            _record_checksums(directory, shard, {npy.name: partial, index.name: index,
                                                 failed.name: failed})
    return len(failures)


def _decode_task(task: tuple[str, CacheSpec, int]) -> np.ndarray | str:
    """The resized image, or the reason it could not be made (whatever the exception)."""
    path, spec, max_pixels = task
    try:
        return spec.preprocessing.load(Path(path), max_pixels)
    except Exception as error:  # one bad file never stops the build; the reason names it
        reason = f"{type(error).__name__}: {error}"
        return reason if path in reason else f"{reason} ({path})"


def _decode_all(tasks: list[tuple[str, CacheSpec, int]],
                num_workers: int) -> Iterator[np.ndarray | str]:
    """Decode tasks in order, in a process pool (in-process when num_workers <= 1)."""
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(_decode_task, tasks)
        return
    # forkserver, not fork: a process that has already run OpenCV's thread pool (or any other
    # threads) can deadlock in a forked child; the server is a fresh interpreter with only this
    # module preloaded, so workers fork from it at once. One OpenCV thread each, since the pool
    # already occupies the cores.
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(num_workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        yield from pool.imap(_decode_task, tasks, chunksize=4)


def _parse_part(text: str) -> tuple[int, int]:
    try:
        index, of = (int(value) for value in text.split("/"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/N, e.g. 0/4") from error
    if not 0 <= index < of:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected 0 <= i < N")
    return index, of


def main(argv: list[str] | None = None) -> BuildSummary:
    """CLI: build (part of) the cache of a source's images; see ``--help``."""
    # the CLI reads sources; the cache itself (above) takes any manifest and imports none
    from cxr_lightning.data.sources import SOURCES, build_manifest, every_labelled_image
    from cxr_lightning.data.sources.options import LABELERS

    parser = argparse.ArgumentParser(
        prog=program_name("cxr_lightning.data.cache"),
        description="Build the resized image cache of a source's images (resumable). "
                    "With --shard i/N several machines build disjoint shards; copy them into one "
                    "directory and run once more without --shard to mark the cache complete.",
        formatter_class=HelpFormatter)
    parser.add_argument("--root", required=True,
                        help="the source's directory (data.root), e.g. MIMIC-CXR's holding files/")
    parser.add_argument("--out", required=True,
                        help="the cache_dir (data.cache_dir); the cache goes in a keyed subdir")
    parser.add_argument("--size", type=int, default=512, help="side of the square images, pixels")
    parser.add_argument("--resize", choices=RESIZE_POLICIES, default="pad",
                        help="how a non-square image becomes square (data.resize)")
    parser.add_argument("--histogram-equalization", action="store_true",
                        help="equalise every image's histogram (MIMIC-CXR-JPG's conversion)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help="images per shard file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decoding processes (default: the CPUs, here %(default)s)")
    parser.add_argument("--shard", type=_parse_part, default=(0, 1), metavar="i/N",
                        help="build only the shards k with k %% N == i")
    parser.add_argument("--source", choices=list(SOURCES), default="mimic_cxr",
                        help="how to read --root (data.source)")
    parser.add_argument("--labels-root", default=None,
                        help="MIMIC only: the directory holding the mimic-cxr-2.0.0-*.csv.gz "
                             "tables (data.labels_root; default: found from --root)")
    parser.add_argument("--labeler", choices=LABELERS, default="chexpert",
                        help="MIMIC only: whose labels decide which images are labelled")
    parser.add_argument("--retry-failures", action="store_true",
                        help="decode the images that failed in an earlier build again")
    parser.add_argument("--max-failed-fraction", type=float, default=MAX_FAILED_FRACTION,
                        help="fail the build when more of its images cannot be decoded")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="refuse images declaring more pixels (before decoding them)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    spec = CacheSpec(Preprocessing(args.size, resize=args.resize,
                                   histogram_equalization=args.histogram_equalization),
                     shard_size=args.shard_size)
    # every labelled image: a cache that covers whichever cohort the DataModule selects
    manifest, _ = build_manifest(args.source, args.root, every_labelled_image(
        args.source, args.labeler, args.labels_root))
    directory = cache_directory(manifest, Path(args.out), spec)
    return build_shards(manifest, args.root, directory, spec, args.workers, args.shard,
                        retry_failures=args.retry_failures,
                        max_failed_fraction=args.max_failed_fraction, max_pixels=args.max_pixels)


if __name__ == "__main__":
    raise SystemExit(run_command(main))
