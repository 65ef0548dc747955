"""Manifest -> resized 8-bit image cache, built once and streamed by every epoch.

A cache lives in ``{cache_dir}/{source}-{size}px-{key}`` where ``key`` hashes the preprocessing
parameters and the list of images, so a changed parameter means a new cache, never a stale one.
It holds ``images.npy`` (uint8, N x size x size, memory-mapped when read), ``index.csv``
(image_id -> row), ``skipped.csv`` (images that could not be decoded, with the reason) and
``spec.json``. It is written into a temporary directory and renamed when complete, so an
interrupted build never leaves a cache that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxr_lightning.data.dicom import read_dicom_uint8

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CacheSpec:
    """Preprocessing parameters that define a cache's contents."""

    image_size: int
    interpolation: str = "area"
    format_version: int = CACHE_FORMAT_VERSION


@dataclass
class ImageCache:
    """A built cache: the memory-mapped images and the image_id -> row index."""

    directory: Path
    images: np.ndarray
    row_of: dict[str, int]
    skipped: pd.DataFrame


_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def cache_directory(manifest: pd.DataFrame, cache_dir: Path, spec: CacheSpec) -> Path:
    """The directory a cache of these images under this spec lives in."""
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    for image_id, path in sorted(zip(manifest["image_id"], manifest["path"], strict=True)):
        digest.update(f"{image_id}\t{path}\n".encode())
    source = str(manifest["source"].iloc[0]) if len(manifest) else "empty"
    return Path(cache_dir) / f"{source}-{spec.image_size}px-{digest.hexdigest()[:12]}"


def load_and_resize(path: Path, spec: CacheSpec) -> np.ndarray:
    """Decode one image file to 8-bit grey and resize it to spec.image_size squared."""
    image = read_dicom_uint8(path)
    if min(image.shape) < 2:
        raise ValueError(f"{path}: image of shape {image.shape} is too small to resize")
    size = (spec.image_size, spec.image_size)
    return cv2.resize(image, size, interpolation=_INTERPOLATIONS[spec.interpolation])


def _decode_task(task: tuple[int, str, CacheSpec]) -> tuple[int, np.ndarray | None, str]:
    row, path, spec = task
    try:
        return row, load_and_resize(Path(path), spec), ""
    except (OSError, ValueError, RuntimeError) as error:
        return row, None, f"{type(error).__name__}: {error}"


def build_image_cache(
    manifest: pd.DataFrame,
    source_root: str | Path,
    cache_dir: str | Path,
    spec: CacheSpec,
    num_workers: int = 2,
) -> ImageCache:
    """Return the cache of the manifest's images, building it first when it does not exist.

    Images that fail to decode are recorded in ``skipped.csv`` with the reason and left out;
    the build goes on.
    """
    directory = cache_directory(manifest, Path(cache_dir), spec)
    if not (directory / "spec.json").is_file():
        _build(manifest, Path(source_root), directory, spec, num_workers)
    else:
        log.info("Using the image cache %s", directory)
    return open_image_cache(directory)


def open_image_cache(directory: Path) -> ImageCache:
    """Open a complete cache directory (images memory-mapped read-only)."""
    index = pd.read_csv(directory / "index.csv", dtype={"image_id": str})
    skipped = pd.read_csv(directory / "skipped.csv", dtype={"image_id": str})
    images = np.load(directory / "images.npy", mmap_mode="r")
    return ImageCache(directory, images, dict(zip(index["image_id"], index["row"], strict=True)),
                      skipped)


def _build(manifest: pd.DataFrame, source_root: Path, directory: Path, spec: CacheSpec,
           num_workers: int) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        n = len(manifest)
        images = np.lib.format.open_memmap(staging / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, spec.image_size, spec.image_size))
        tasks = [(row, str(source_root / path), spec) for row, path in enumerate(manifest["path"])]
        failures: dict[int, str] = {}
        progress = tqdm(total=n, desc=f"Caching {n} images at {spec.image_size}px", unit="img")
        for row, image, error in _run_tasks(tasks, num_workers):
            if image is None:
                failures[row] = error
            else:
                images[row] = image
            progress.update()
        progress.close()
        images.flush()
        del images
        ok = [row for row in range(n) if row not in failures]
        pd.DataFrame({"image_id": manifest["image_id"].iloc[ok].to_numpy(), "row": ok}).to_csv(
            staging / "index.csv", index=False)
        pd.DataFrame({
            "image_id": manifest["image_id"].iloc[list(failures)].to_numpy(),
            "path": manifest["path"].iloc[list(failures)].to_numpy(),
            "reason": list(failures.values()),
        }).to_csv(staging / "skipped.csv", index=False)
        (staging / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if failures:
        log.warning("%d of %d images could not be decoded and are skipped; reasons in %s",
                    len(failures), n, directory / "skipped.csv")
    log.info("Built the image cache %s (%d images)", directory, n - len(failures))


def _run_tasks(tasks: list, num_workers: int):
    """Decode tasks in a process pool (or in-process when num_workers <= 1), in any order."""
    if num_workers <= 1:
        yield from map(_decode_task, tasks)
        return
    # fork: workers start at once (spawn would re-import the training stack in each worker)
    with get_context("fork").Pool(num_workers) as pool:
        yield from pool.imap_unordered(_decode_task, tasks, chunksize=8)
