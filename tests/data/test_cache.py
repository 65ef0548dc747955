"""Sharded image cache: resize policies, determinism, kill-and-resume, --shard parts, failures."""

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr_lightning.data import cache as cache_module
from cxr_lightning.data.cache import (
    COMPLETE_MARKER,
    CacheIntegrityError,
    CacheSpec,
    CacheSpecMismatchError,
    build_image_cache,
    build_shards,
    cache_directory,
    open_image_cache,
)
from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.data.sample import generate_sample
from cxr_lightning.data.sources.mimic import build_sample
from cxr_lightning.data.sources.options import SourceOptions
from tests.helpers.samples import sample_tables

SPEC = CacheSpec(Preprocessing(16), shard_size=4)


@pytest.fixture(scope="module")
def manifest(small_sample):
    """The first 12 images of the sample (three shards of four)."""
    full, _ = build_sample(small_sample, SourceOptions())
    return full.iloc[:12].reset_index(drop=True)


def files_of(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_cache_keys_and_spec_records_are_those_of_format_3_caches():
    """Existing caches stay valid: the key and spec.json's ``spec`` are what the code wrote
    before CacheSpec held a Preprocessing (directory names computed by that code), and the
    input channels, which do not change the cached squares, do not change the key."""
    listed = pd.DataFrame({"image_id": ["b", "a"], "path": ["files/b.dcm", "files/a.dcm"],
                           "source": "mimic_cxr"})
    default = CacheSpec(Preprocessing(512))
    assert cache_directory(listed, Path("c"), default).name == "mimic_cxr-512px-de60f59fe1a3"
    other = Preprocessing(64, resize="squash", interpolation="linear",
                          histogram_equalization=True)
    for channels in (3, 1):
        spec = CacheSpec(replace(other, channels=channels), shard_size=8)
        assert cache_directory(listed, Path("c"), spec).name == "mimic_cxr-64px-8a6aa0a34ef1"
    assert default.record() == {"image_size": 512, "resize": "pad", "interpolation": "area",
                                "histogram_equalization": False, "shard_size": 1024,
                                "format_version": 3}


def test_build_is_sharded_deterministic_and_excludes_nothing_it_decoded(manifest, small_sample,
                                                                        tmp_path):
    first = build_shards(manifest, small_sample, tmp_path / "a", SPEC, num_workers=2)
    build_shards(manifest.sample(frac=1, random_state=0), small_sample, tmp_path / "b", SPEC, 1)
    assert (first.shards_total, first.images_built, first.images_failed) == (3, 12, 0)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        [".lock", COMPLETE_MARKER, "spec.json"] + [f"shard-{k:05d}{suffix}" for k in range(3)
                                          for suffix in (".npy", ".index.csv", ".failures.csv",
                                                         ".sha256")])
    assert np.load(tmp_path / "a" / "shard-00002.npy").shape == (4, 16, 16)
    stored = json.loads((tmp_path / "a" / "spec.json").read_text())
    assert stored["spec"]["resize"] == "pad" and stored["n_images"] == 12
    cache = open_image_cache(tmp_path / "a", SPEC)
    ordered = sorted(manifest["image_id"])
    assert [cache.row_of[i] for i in ordered] == list(range(12))
    reference = SPEC.preprocessing.load(small_sample / manifest.iloc[5]["path"])
    np.testing.assert_array_equal(cache.get(manifest.iloc[5]["image_id"]), reference)


_SLOW_BUILD = """
import sys, time
import pandas as pd
from cxr_lightning.data import cache
from cxr_lightning.data.preprocess import Preprocessing
decode = Preprocessing.decode
Preprocessing.decode = lambda self, *args: (time.sleep(0.1), decode(self, *args))[1]
manifest = pd.read_csv(sys.argv[1], dtype={"image_id": str})
cache.build_shards(manifest, sys.argv[2], sys.argv[3],
                   cache.CacheSpec(Preprocessing(16), shard_size=4), 1)
"""


def test_a_killed_build_resumes_without_redoing_complete_shards(manifest, small_sample,
                                                                tmp_path):
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(tmp_path / "manifest.csv"),
                                str(small_sample), str(killed)], stderr=subprocess.DEVNULL)
    first_shard = killed / "shard-00000.npy"
    deadline = time.monotonic() + 60
    while not first_shard.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_shard.exists() and not (killed / COMPLETE_MARKER).exists()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        open_image_cache(killed, SPEC)
    stamp = first_shard.stat().st_mtime_ns
    resumed = build_shards(manifest, small_sample, killed, SPEC, 1)
    assert resumed.shards_built < 3 and first_shard.stat().st_mtime_ns == stamp
    build_shards(manifest, small_sample, tmp_path / "whole", SPEC, 1)
    assert files_of(killed) == files_of(tmp_path / "whole")


def test_concurrent_builders_of_one_directory_agree(manifest, small_sample, tmp_path):
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    shared = tmp_path / "shared"
    processes = [subprocess.Popen([sys.executable, "-c", _SLOW_BUILD,
                                   str(tmp_path / "manifest.csv"), str(small_sample), str(shared)])
                 for _ in range(2)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    build_shards(manifest, small_sample, tmp_path / "whole", SPEC, 1)
    assert files_of(shared) == files_of(tmp_path / "whole")


def test_cli_parts_together_equal_a_full_build(small_sample, tmp_path):
    common = ["--root", str(small_sample), "--size", "16", "--shard-size", "16", "--workers", "1",
              "--source", "sample"]
    part = cache_module.main([*common, "--out", str(tmp_path / "parts"), "--shard", "0/2"])
    assert not part.complete and part.shards_built == -(-part.shards_total // 2)
    rest = cache_module.main([*common, "--out", str(tmp_path / "parts"), "--shard", "1/2"])
    assert rest.complete and part.directory == rest.directory
    full = cache_module.main([*common, "--out", str(tmp_path / "full")])
    assert files_of(rest.directory) == files_of(full.directory)
    assert full.directory.name == rest.directory.name


def test_a_cohort_reads_the_cli_cache_of_every_labelled_image(small_sample, tmp_path):
    cli = cache_module.main(["--root", str(small_sample), "--out", str(tmp_path), "--size", "16",
                             "--workers", "1", "--source", "sample"])
    cohort, report = build_sample(small_sample, SourceOptions())  # drops uncertain
    assert sum(report.dropped.values()) > 0
    spec = CacheSpec(Preprocessing(16))
    cache = build_image_cache(cohort, small_sample, tmp_path, spec, 1)
    assert cache.directory == cli.directory and set(cohort["image_id"]) <= cache.row_of.keys()
    assert [p.name for p in tmp_path.iterdir()] == [cli.directory.name]
    squash = CacheSpec(Preprocessing(16, resize="squash"))
    other = build_image_cache(cohort, small_sample, tmp_path, squash, 1)
    assert other.directory != cli.directory


def test_cli_caches_mimic_cxr_jpg_from_its_jpg_files(tmp_path):
    """--source mimic_cxr_jpg reads the MIMIC-CXR-JPG project: every image by its .jpg file."""
    jpg_root = sample_tables(generate_sample(tmp_path / "mimic", n_subjects=4, seed=3, workers=1,
                                             jpg=True))
    built = cache_module.main(["--root", str(jpg_root), "--out", str(tmp_path / "cache"),
                               "--size", "16", "--workers", "1", "--source", "mimic_cxr_jpg"])
    assert built.complete and built.directory.name.startswith("mimic_cxr_jpg-16px-")
    index = pd.concat([pd.read_csv(p) for p in sorted(built.directory.glob("shard-*.index.csv"))])
    metadata = pd.read_csv(jpg_root / "mimic-cxr-2.0.0-metadata.csv.gz")
    expected = {f"files/p{str(s)[:2]}/p{s}/s{t}/{d}.jpg" for d, s, t in
                metadata[["dicom_id", "subject_id", "study_id"]].itertuples(index=False)}
    assert set(index["path"]) == expected  # MIMIC-CXR-JPG's naming, every image with labels
    assert all((jpg_root / path).is_file() for path in index["path"])
    failures = [pd.read_csv(p) for p in built.directory.glob("shard-*.failures.csv")]
    assert sum(len(f) for f in failures) == 0


def test_undecodable_images_are_recorded_excluded_and_counted(manifest, small_sample, tmp_path,
                                                             caplog):
    root = tmp_path / "copy"
    shutil.copytree(small_sample, root)
    manifest = manifest.copy()
    corrupt, missing = manifest.iloc[3], manifest.iloc[6]
    (root / corrupt["path"]).write_bytes(b"not a dicom file")
    (root / missing["path"]).unlink()
    png = cv2.imencode(".png", np.full((40, 30), 128, dtype=np.uint8))[1].tobytes()
    (root / "files" / "truncated.png").write_bytes(png[: len(png) // 2])
    manifest.loc[9, "path"] = "files/truncated.png"
    truncated = manifest.iloc[9]
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        summary = build_shards(manifest, root, tmp_path / "cache", SPEC, 1,
                               max_failed_fraction=0.5)
    assert (summary.images_built, summary.images_failed, summary.complete) == (12, 3, True)
    assert "3 of 12 images could not be decoded" in caplog.text
    cache = open_image_cache(tmp_path / "cache", SPEC)
    failures = cache.skipped.set_index("image_id")
    assert set(failures.index) == {corrupt["image_id"], missing["image_id"],
                                   truncated["image_id"]}
    assert failures.loc[truncated["image_id"], "path"] == "files/truncated.png"
    for image_id, reason in failures["reason"].items():
        assert "DecodeError" in reason and failures.loc[image_id, "path"] in reason
    assert "truncated" in failures.loc[truncated["image_id"], "reason"]
    assert len(cache.row_of) == 9 and corrupt["image_id"] not in cache.row_of


def test_a_cache_built_with_other_parameters_is_never_reused(manifest, small_sample, tmp_path):
    build_shards(manifest, small_sample, tmp_path / "c", SPEC, 1)
    squash = CacheSpec(Preprocessing(16, resize="squash"), shard_size=4)
    with pytest.raises(CacheSpecMismatchError, match=r'"pad".*"squash".*delete'):
        open_image_cache(tmp_path / "c", squash)
    with pytest.raises(CacheSpecMismatchError, match="image_list_hash"):
        build_shards(manifest.iloc[1:], small_sample, tmp_path / "c", SPEC, 1)
    assert cache_directory(manifest, tmp_path, SPEC) != cache_directory(manifest, tmp_path, squash)


def test_build_image_cache_reuses_a_complete_cache(manifest, small_sample, tmp_path):
    first = build_image_cache(manifest, small_sample, tmp_path, SPEC, 1)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.directory.iterdir()}
    again = build_image_cache(manifest, small_sample, tmp_path, SPEC, 1)
    assert {p.name: p.stat().st_mtime_ns for p in again.directory.iterdir()} == stamps
    assert os.path.samefile(first.directory, again.directory)


def test_images_pickle_as_paths_for_spawned_workers(manifest, small_sample, tmp_path):
    cache = build_image_cache(manifest, small_sample, tmp_path, SPEC, 1)
    cache.images[0]  # maps a shard
    clone = pickle.loads(pickle.dumps(cache.images))
    assert len(pickle.dumps(cache.images)) < 2000 and clone.shape == (12, 16, 16)
    np.testing.assert_array_equal(clone[11], cache.images[11])
    with pytest.raises(IndexError):
        cache.images[12]


def test_a_cache_in_object_storage_streams_shard_by_shard(small_sample, tmp_path):
    """fsspec's in-memory filesystem stands in for s3:// or gs:// (same code path)."""
    fsspec = pytest.importorskip("fsspec")
    local = CXRDataModule(root=str(small_sample), source="sample", image_size=32, num_workers=0,
                          cache_dir=str(tmp_path / "local"), cache_workers=1)
    local.prepare_data()
    bucket = fsspec.filesystem("memory")
    url = f"memory://bucket/{local.cache.directory.name}"
    for file in local.cache.directory.iterdir():
        if not file.name.startswith("."):
            bucket.pipe(f"{url}/{file.name}", file.read_bytes())
    remote = CXRDataModule(root=str(small_sample), source="sample", image_size=32,
                           num_workers=0, cache_dir=str(tmp_path / "node"), cache_url=url)
    remote.prepare_data()

    def fetched_shards() -> list[Path]:
        return [p for p in (tmp_path / "node").rglob("*") if p.is_file()
                and p.stat().st_size > 10_000]

    assert fetched_shards() == []  # opening reads the index only
    for image_id in local.manifest["image_id"].iloc[:5]:
        assert np.array_equal(remote.cache.get(image_id), local.cache.get(image_id))
    assert len(fetched_shards()) == 1  # the one shard, copied on first read
    with pytest.raises(CacheSpecMismatchError):
        open_image_cache(url, CacheSpec(Preprocessing(48)), tmp_path / "other")
    bucket.rm(f"{url}/shard-00000.npy")
    index = pd.read_csv(local.cache.directory / "shard-00000.index.csv")
    index["image_id"] = [f"not-this-cohort-{i}" for i in range(len(index))]
    bucket.pipe(f"{url}/shard-00000.index.csv", index.to_csv(index=False).encode())
    with pytest.raises(ValueError, match="lacks"):
        CXRDataModule(root=str(small_sample), source="sample", image_size=32, num_workers=0,
                      cache_dir=str(tmp_path / "node2"), cache_url=url).prepare_data()


def _truncate_index(directory: Path) -> str:
    index = directory / "shard-00000.index.csv"
    index.write_text("".join(index.read_text().splitlines(keepends=True)[:-2]))
    return index.name


def _flip_a_byte(directory: Path) -> str:
    shard = directory / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x10
    shard.write_bytes(bytes(data))
    return shard.name


def _truncate_shard(directory: Path) -> str:
    shard = directory / "shard-00002.npy"
    shard.write_bytes(shard.read_bytes()[:200])
    return shard.name


@pytest.mark.parametrize("damage", [_truncate_index, _flip_a_byte, _truncate_shard])
def test_a_damaged_shard_is_refused_on_open_and_rebuilt(manifest, small_sample, tmp_path,
                                                       caplog, damage):
    """Every image read from the cache is its own decoded image, whatever was damaged."""
    directory = build_image_cache(manifest, small_sample, tmp_path, SPEC, 1).directory
    damaged = damage(directory)
    with pytest.raises(CacheIntegrityError, match=damaged.split(".")[0]):
        open_image_cache(directory, SPEC)
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        cache = build_image_cache(manifest, small_sample, tmp_path, SPEC, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{damaged.split('.')[0]}.npy is damaged" in warnings[0]
    for image_id, path in zip(manifest["image_id"], manifest["path"], strict=True):
        np.testing.assert_array_equal(cache.get(image_id),
                                      SPEC.preprocessing.load(small_sample / path))
