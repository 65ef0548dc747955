"""What checking a cache's integrity costs: counts and SHA-256 of every shard when a job opens it.

    .venv/bin/python experiments/bench_cache_check.py [--shards 4] [--size 512]
    make bench-cache-check

Writes ``--shards`` full shards (1,024 random images each) of a ``--size`` px cache through the
cache's own shard writer (array, index, failures list and checksums, as a build writes them),
then times, with the files in the page cache (the usual case: the build or the last job just
read them):

- opening with the check (:func:`open_image_cache`: counts and checksums of every shard, on up
  to 8 threads), and without it, per shard and per image;
- one pass reading every image out of the opened cache (what an epoch's loading does), for
  scale: the check reads each byte once per job, an epoch at least once per epoch.

It prints; it does not assert. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxr_lightning.data import cache
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.integrity import write_atomic

log = logging.getLogger("bench_cache_check")


def write_cache(directory: Path, spec: cache.CacheSpec, n_shards: int) -> None:
    """A complete cache of random images, written shard by shard by the cache's writer."""
    n = n_shards * spec.shard_size
    manifest = pd.DataFrame({"image_id": [f"{i:08d}" for i in range(n)],
                             "path": [f"files/{i:08d}.dcm" for i in range(n)],
                             "size": -1, "mtime_ns": -1})
    directory.mkdir(parents=True)
    record = cache._spec_record(spec, manifest, str(directory))
    write_atomic(directory / "spec.json", json.dumps(record))
    rng = np.random.default_rng(0)
    shape = (spec.shard_size, spec.image_size, spec.image_size)
    for k in range(n_shards):
        images = iter(rng.integers(0, 256, shape, dtype=np.uint8))
        rows = manifest.iloc[k * spec.shard_size:(k + 1) * spec.shard_size]
        with tqdm(total=len(rows), disable=True) as progress:
            cache._write_shard(directory, k, rows, spec, images, progress)
    write_atomic(directory / cache.COMPLETE_MARKER, f"{n_shards} shards\n")


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = cache.CacheSpec(Preprocessing(args.size))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "cache"
        write_cache(directory, spec, args.shards)
        n_images = args.shards * spec.shard_size
        shard_mb = (directory / "shard-00000.npy").stat().st_size / 1e6
        started = time.perf_counter()
        opened = cache.open_image_cache(directory, spec)
        checked_s = time.perf_counter() - started
        started = time.perf_counter()
        cache._open(directory, spec)
        unchecked_s = time.perf_counter() - started
        started = time.perf_counter()
        total = sum(int(np.array(opened.images[i])[0, 0]) for i in range(n_images))
        read_s = time.perf_counter() - started
    figures = {
        "shards": args.shards, "size": args.size, "shard_mb": round(shard_mb, 1),
        "threads": min(8, os.cpu_count() or 1),
        "open_checked_s": round(checked_s, 3), "open_unchecked_s": round(unchecked_s, 3),
        "check_s_per_shard": round((checked_s - unchecked_s) / args.shards, 3),
        "check_ms_per_image": round(1e3 * (checked_s - unchecked_s) / n_images, 3),
        "read_pass_s": round(read_s, 3), "checked_sum": total,
    }
    log.info("%d shards of %.0f MB at %d px: open with the check %.2f s, without %.2f s "
             "(%.3f s per shard, %.3f ms per image, %d threads); one pass reading every image "
             "%.2f s", args.shards, shard_mb, args.size, checked_s, unchecked_s,
             figures["check_s_per_shard"], figures["check_ms_per_image"], figures["threads"],
             read_s)
    print(json.dumps(figures))  # noqa: T201 - the benchmark's result line
    return figures


if __name__ == "__main__":
    main()
