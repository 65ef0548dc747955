"""CXRDataModule over the image cache: built once, keyed by parameters, never decoding in training.

The cache's own format (shards, resume, failures) is tested in test_cache.py.
"""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch

from cxr_lightning.data.cache import CacheSpec, build_image_cache, cache_directory
from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from cxr_lightning.data.sample import generate_sample
from cxr_lightning.data.sources.mimic import build_sample
from cxr_lightning.data.sources.options import SourceOptions
from tests.helpers.samples import sample_tables


@pytest.fixture()
def datamodule(small_sample, tmp_path):
    module = CXRDataModule(root=str(small_sample), source="sample", image_size=48, batch_size=8,
                           num_workers=0, cache_dir=str(tmp_path / "cache"), cache_workers=1,
                           resize="squash")
    module.prepare_data()
    return module


def test_cache_holds_the_resized_display_image(datamodule, small_sample):
    manifest = datamodule.manifest
    row = manifest[manifest["view"] != "LATERAL"].iloc[0]
    dataset = pydicom.dcmread(small_sample / row["path"])
    # independent reference: pydicom's LUT functions, min-max over the window range
    assert datamodule.cache.images.shape[1:] == (48, 48)
    cached = np.asarray(datamodule.cache.images[datamodule.cache.row_of[row["image_id"]]])
    pixels = pydicom.pixels.apply_modality_lut(dataset.pixel_array, dataset)
    if "WindowCenter" in dataset:
        display = pydicom.pixels.apply_voi_lut(pixels, dataset)
        low, high = float(np.min(display)), float(np.max(display))
        grey = (display - low) / max(high - low, 1e-9)
    else:
        low, high = np.percentile(pixels, [0.5, 99.5])
        grey = np.clip((pixels - low) / (high - low), 0, 1)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        grey = 1 - grey
    reference = cv2.resize(np.round(grey * 255).astype(np.uint8), (48, 48),
                           interpolation=cv2.INTER_AREA)
    assert np.abs(cached.astype(int) - reference.astype(int)).mean() < 3


def test_batches_are_normalised_three_channel_tensors(datamodule):
    loaded = next(iter(datamodule.val_dataloader()))
    assert loaded["image"].dtype == torch.uint8  # collated and copied as uint8 ...
    batch = datamodule.on_after_batch_transfer(loaded, 0)  # ... normalised on the device
    images, labels = batch["image"], batch["labels"]
    assert images.shape == (len(labels), 3, 48, 48) and images.dtype == torch.float32
    first = datamodule.split_manifest("val").iloc[0]
    cached = datamodule.cache.images[datamodule.cache.row_of[first["image_id"]]]
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)):
        expected = (torch.tensor(np.asarray(cached), dtype=torch.float32) / 255 - mean) / std
        torch.testing.assert_close(images[0, channel], expected, atol=1e-5, rtol=0)
    assert labels.shape[1] == 2 and set(labels.flatten().tolist()) <= {0.0, 1.0}


def test_worker_batches_equal_in_process_batches(datamodule):
    in_process = next(iter(datamodule.val_dataloader()))
    datamodule.num_workers = 1
    from_worker = next(iter(datamodule.val_dataloader()))
    torch.testing.assert_close(from_worker["image"], in_process["image"], atol=0, rtol=0)
    torch.testing.assert_close(from_worker["labels"], in_process["labels"])


def test_training_never_decodes_dicom(datamodule, monkeypatch):
    def forbidden(self, path, max_pixels=0):
        raise AssertionError(f"decoded {path} during training")

    monkeypatch.setattr(Preprocessing, "decode", forbidden)
    datamodule.setup("fit")
    assert len(list(datamodule.train_dataloader())) > 0


def test_cache_is_reused_and_keyed_by_parameters(small_sample, tmp_path):
    manifest, _ = build_sample(small_sample, SourceOptions())
    first = build_image_cache(manifest, small_sample, tmp_path, CacheSpec(Preprocessing(32)), 1)
    stamp = (first.directory / "shard-00000.npy").stat().st_mtime_ns
    again = build_image_cache(manifest, small_sample, tmp_path, CacheSpec(Preprocessing(32)), 1)
    assert again.directory == first.directory
    assert (again.directory / "shard-00000.npy").stat().st_mtime_ns == stamp
    for other, images in ((Preprocessing(40), manifest), (Preprocessing(32), manifest.iloc[1:])):
        assert cache_directory(images, tmp_path, CacheSpec(other)) != first.directory


def test_undecodable_images_are_recorded_and_skipped(small_sample, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_sample, root)
    manifest, _ = build_sample(root, SourceOptions(labels_root=sample_tables(small_sample)))
    broken = manifest.iloc[3]
    (root / broken["path"]).write_bytes(b"not a dicom file")
    (root / manifest.iloc[5]["path"]).unlink()
    cache = build_image_cache(manifest, root, tmp_path / "cache", CacheSpec(Preprocessing(32)), 1)
    assert set(cache.skipped["image_id"]) == {broken["image_id"], manifest.iloc[5]["image_id"]}
    assert broken["path"] in cache.skipped["path"].tolist()
    assert cache.skipped["reason"].str.len().min() > 0
    assert len(cache.row_of) == len(manifest) - 2


@pytest.mark.realdata
def test_nih_pngs_stream_through_the_same_datamodule(shared_data, tmp_path):
    nih = shared_data / "nih_chestxray14_64px"
    module = CXRDataModule(root=str(nih), source="nih", image_size=32, batch_size=16,
                           num_workers=0, cache_dir=str(tmp_path), cache_workers=1,
                           split="random_patient")
    module.prepare_data()
    assert len(module.manifest) == 483 and module.cohort_report.dropped["undecodable"] == 0
    assert module.cohort_report.patients == 133
    batch = module.on_after_batch_transfer(next(iter(module.train_dataloader())), 0)
    assert batch["image"].shape == (16, 3, 32, 32) and torch.isfinite(batch["image"]).all()
    assert batch["image"].std() > 0.1  # real pixels, not an empty canvas


def test_jpg_tree_matches_equalised_dicoms(tmp_path):
    """MIMIC-CXR-JPG input (data=mimic_cxr_jpg) and DICOM input with histogram_equalization=true
    give comparable training images: the sample's JPG project is made the way MIMIC-CXR-JPG was
    (equalised 8 bit, JPEG quality 95) and read as a JPG download, tables and images together."""
    dicom_root = generate_sample(tmp_path / "download", n_subjects=12, seed=3, workers=1,
                                 jpg=True)
    jpg_root = sample_tables(dicom_root)
    manifest, _ = build_sample(dicom_root, SourceOptions())
    assert all((jpg_root / Path(path).with_suffix(".jpg")).is_file()
               for path in manifest["path"])

    def cached(root, source, equalise):
        module = CXRDataModule(root=str(root), source=source, image_size=48, num_workers=0,
                               cache_dir=str(tmp_path / source), cache_workers=1,
                               histogram_equalization=equalise)
        module.prepare_data()
        return module

    from_dicom, from_jpg = cached(dicom_root, "sample", True), cached(jpg_root, "mimic_cxr_jpg",
                                                                      False)
    assert len(from_jpg.manifest) == len(from_dicom.manifest) == len(manifest)
    for image_id in manifest["image_id"].iloc[:20]:
        difference = (from_dicom.cache.get(image_id).astype(int)
                      - from_jpg.cache.get(image_id).astype(int))
        assert np.abs(difference).mean() < 2  # JPEG quality 95, averaged by the downscale
