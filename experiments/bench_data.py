"""Data-path throughput: full-size DICOM -> 512 cache (per core), cache -> batches (per worker).

    .venv/bin/python experiments/bench_data.py [--uncompressed 40] [--jpeg2000 20] [--size 512]
    make bench-data

Writes synthetic full-size (2500 x 2000) 12-bit MONOCHROME2 DICOMs with a window into a temporary
directory, uncompressed and JPEG 2000 lossless, then measures through the real code:

- preprocessing: ``build_shards`` with one process (decode, window, resize, shard write), img/s
  per core for each transfer syntax;
- loading: the real ``CachedImageDataset`` + ``DataLoader`` with one worker at ``--size``, with
  and without the default training augmentation, img/s per worker. Batches leave the loader as
  uint8; the ImageNet normalisation runs on the training device (``on_after_batch_transfer``),
  and its CPU cost, should a CPU be the device, is printed separately;
- peak resident memory of this process and of its children (``ru_maxrss``).

Targets per core: preprocessing >= 15 img/s (uncompressed); loading >= 800 img/s without
augmentation, >= 250 with. It prints; it does not assert. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from torch.utils.data import DataLoader

from cxr_lightning.data.cache import CacheSpec, build_shards, open_image_cache
from cxr_lightning.data.datamodule import CachedImageDataset
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.data.transforms import training_augmentation

log = logging.getLogger("bench_data")

HEIGHT, WIDTH = 2500, 2000
DISTINCT_JPEG2000 = 2  # J2K encoding is slow: encode this many, copy them to the rest


def synthetic_pixels(rng: np.random.Generator) -> np.ndarray:
    """A smooth 12-bit radiograph-like image (blobs + gradient + noise), uint16 (H, W)."""
    coarse = rng.normal(2000, 500, size=(25, 20)).astype(np.float32)
    smooth = cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    smooth += np.linspace(-300, 300, WIDTH, dtype=np.float32)[None, :]
    smooth += rng.normal(0, 20, size=(HEIGHT, WIDTH)).astype(np.float32)
    return np.clip(smooth, 0, 4095).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray, compress: bool) -> None:
    """A DX-like single-frame MONOCHROME2 file, 12 bits stored in 16, with a window."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    if compress:
        ds.compress(JPEG2000Lossless)
    ds.save_as(path, enforce_file_format=True)


def write_inputs(root: Path, n_plain: int, n_j2k: int) -> dict[str, pd.DataFrame]:
    """The synthetic DICOMs under ``root`` and one manifest per transfer syntax."""
    rng = np.random.default_rng(0)
    manifests = {}
    for name, count, compress in (("uncompressed", n_plain, False), ("jpeg2000", n_j2k, True)):
        paths = []
        for i in range(count):
            path = root / f"{name}-{i:04d}.dcm"
            if compress and i >= DISTINCT_JPEG2000:
                path.write_bytes(paths[i % DISTINCT_JPEG2000].read_bytes())
            else:
                write_dicom(path, synthetic_pixels(rng), compress)
            paths.append(path)
        manifests[name] = pd.DataFrame({
            "image_id": [p.stem for p in paths], "path": [p.name for p in paths],
            "source": name, "edema": 0.0, "effusion": 1.0})
    return manifests


def preprocessing_rate(manifest: pd.DataFrame, root: Path, out: Path,
                       spec: CacheSpec) -> tuple[float, float]:
    """Images per wall second and per CPU second of a one-process build of the cache."""
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = build_shards(manifest, root, out, spec, num_workers=1)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if summary.images_failed:
        log.warning("%d images failed to decode", summary.images_failed)
    return len(manifest) / wall, len(manifest) / cpu


def loader_rate(dataset: CachedImageDataset, batch_size: int) -> tuple[float, float]:
    """Images per wall second and per CPU second of the one DataLoader worker, one epoch.

    The worker's CPU time (``RUSAGE_CHILDREN`` once it has exited) is the per-core figure that
    other processes on a shared machine do not distort.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=1,
                        prefetch_factor=4)
    started = time.perf_counter()
    count = sum(len(batch["image"]) for batch in loader)
    wall = time.perf_counter() - started
    del loader
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return count / wall, count / cpu


def normalisation_rate(size: int, batch_size: int = 32, repeats: int = 5) -> float:
    """Images per second of ``Preprocessing.normalise`` on one CPU thread (best of ``repeats``)."""
    preprocessing = Preprocessing(size)
    images = torch.randint(0, 256, (batch_size, size, size), dtype=torch.uint8)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        preprocessing.normalise(images)
        best = min(best, time.perf_counter() - started)
    return batch_size / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncompressed", type=int, default=40)
    parser.add_argument("--jpeg2000", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-images", type=int, default=3000,
                        help="images drawn per loader measurement (the cache's rows repeated)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(1)
    figures: dict[str, float | int | str] = {"size": args.size, "height": HEIGHT, "width": WIDTH}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        (root / "dicom").mkdir()
        manifests = write_inputs(root / "dicom", args.uncompressed, args.jpeg2000)
        log.info("Wrote %d + %d synthetic DICOMs in %.1f s", args.uncompressed, args.jpeg2000,
                 time.perf_counter() - started)
        spec = CacheSpec(Preprocessing(args.size))
        for name, manifest in manifests.items():
            wall, cpu = preprocessing_rate(manifest, root / "dicom", root / f"cache-{name}", spec)
            figures[f"preprocess_{name}_img_per_s_per_core"] = round(cpu, 2)
            figures[f"preprocess_{name}_img_per_s_wall"] = round(wall, 2)
            log.info("preprocessing %s: %.1f img/s per CPU second (%.1f per wall second)",
                     name, cpu, wall)

        cache = open_image_cache(root / "cache-uncompressed", spec)
        manifest = manifests["uncompressed"]
        repeats = -(-args.loader_images // len(manifest))
        repeated = pd.concat([manifest] * repeats, ignore_index=True)
        for label, dataset in (
                ("noaug", CachedImageDataset(repeated, cache)),
                ("aug", CachedImageDataset(repeated, cache, training_augmentation()))):
            wall, cpu = loader_rate(dataset, args.batch_size)
            figures[f"loader_{label}_img_per_s_per_worker"] = round(cpu, 1)
            figures[f"loader_{label}_img_per_s_wall"] = round(wall, 1)
            log.info("loader at %dpx, %s: %.0f img/s per worker CPU second (%.0f per wall "
                     "second)", args.size, label, cpu, wall)
        figures["normalise_on_cpu_img_per_s"] = round(normalisation_rate(args.size), 1)
    figures["peak_rss_mb_self"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    figures["peak_rss_mb_children"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    figures["targets"] = "preprocess_uncompressed>=15, loader_noaug>=800, loader_aug>=250"
    print(json.dumps(figures))  # noqa: T201 - the benchmark's result line


if __name__ == "__main__":
    main()
