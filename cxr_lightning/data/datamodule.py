"""CXRDataModule: source -> manifest -> image cache -> batches of normalised 3-channel tensors.

Batches leave the DataLoader as uint8 (B, H, W) and become ImageNet-normalised float (B, 3, H, W)
in :meth:`CXRDataModule.on_after_batch_transfer`, i.e. on the training device: 12x less to
collate, pin and copy than float32 with three channels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import albumentations as A  # noqa: N812
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cxr_lightning.data.activations import ActivationSource
from cxr_lightning.data.cache import CacheSpec, ImageCache, build_image_cache, open_image_cache
from cxr_lightning.data.cohort import cohort_summary
from cxr_lightning.data.manifest import CohortReport
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.data.sample import ensure_sample, is_complete_sample, sample_out_dir
from cxr_lightning.data.sampling import EpochSampler, ResumableDataLoader
from cxr_lightning.data.sources import build_manifest, check_root, check_source
from cxr_lightning.data.sources.options import SourceOptions
from cxr_lightning.data.transforms import augment, training_augmentation
from cxr_lightning.data.workers import OneOpenCVThreadLoader
from cxr_lightning.errors import BadValueError
from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)

PREFETCH_FACTOR = 4
"""Batches each DataLoader worker loads ahead (PyTorch's default is 2)."""


class CachedImageDataset(Dataset):
    """Images of one split, read from the cache; items are dicts of image, labels and index.

    Map-style, so the DataLoader's workers split it without any help. Keys are an index, or an
    ``(index, epoch)`` pair from :class:`~cxr_lightning.data.sampling.EpochSampler`: the
    augmentation of an image is seeded by ``(seed, epoch, index)``, so it does not depend on
    the worker that loads it.
    """

    def __init__(self, manifest: pd.DataFrame, cache: ImageCache,
                 augmentation: A.Compose | None = None, seed: int = 0) -> None:
        self.rows = np.array([cache.row_of[i] for i in manifest["image_id"]], dtype=np.int64)
        self.labels = torch.tensor(manifest[list(FINDINGS)].to_numpy(dtype=np.float32))
        self.images = cache.images
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image = np.array(self.images[self.rows[index]])  # a writable copy of the cached row
        if self.augmentation is not None:
            image = augment(self.augmentation, image, self.seed, epoch, index)
        return {"image": torch.from_numpy(np.array(image)), "labels": self.labels[index],
                "index": torch.tensor(index)}


class ActivationDataset(Dataset):
    """A split's items with the frozen prefix's activations (``activations``) in place of the
    image, from the source's current store (its images while the store is ``None``). Keys as
    :class:`CachedImageDataset`'s; the labels and index are the same."""

    def __init__(self, images: CachedImageDataset, source: ActivationSource, split: str) -> None:
        self.images = images
        self.source = source
        self.offset = source.offset(split)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        store = self.source.store
        if store is None:
            return self.images[key]
        index = key[0] if isinstance(key, tuple) else key
        return {"activations": store[self.offset + index], "labels": self.images.labels[index],
                "index": torch.tensor(index)}


class CXRDataModule(pl.LightningDataModule):
    """Streams a MIMIC-CXR-format source at ``image_size`` from a cache built once.

    With ``sample`` set (a dict of generator arguments), a MIMIC-CXR-format sample is generated
    first when ``root`` holds no complete sample: in PhysioNet's layout when ``root`` is a
    ``.../physionet.org/files/mimic-cxr/2.0.0`` path (the tables then go to the sibling
    MIMIC-CXR-JPG project), else all into ``root``; grown where its subjects are too few to
    train a multiclass model (:func:`~cxr_lightning.data.sample.generate.trainable_plan`).
    ``labels_root`` is where MIMIC-CXR-JPG's tables are (default: found from ``root``, see
    :func:`~cxr_lightning.data.sources.mimic.resolve_layout`). ``source`` is a name of the
    registry (:data:`~cxr_lightning.data.sources.SOURCES`), read under the cohort options
    (:class:`~cxr_lightning.data.sources.options.SourceOptions`), both checked on construction.

    ``seed`` fixes the training order and augmentation of every epoch (both functions of
    ``(seed, epoch)`` and the image, independent of ``num_workers``); training batches can be
    checkpointed mid-epoch (:class:`~cxr_lightning.data.sampling.ResumableDataLoader`).
    """

    def __init__(
        self,
        root: str | None,
        source: str = "mimic_cxr",
        labeler: str = "chexpert",
        image_size: int = 512,
        batch_size: int = 16,
        num_workers: int = 4,
        cache_dir: str = "cache",
        cache_workers: int = 2,
        augment: bool = True,
        resize: str = "pad",
        histogram_equalization: bool = False,
        label_policy: str | Mapping[str, str] | None = None,
        views: Sequence[str] | None = None,
        split: str = "official",
        split_seed: int = 0,
        cache_url: str | None = None,
        sample: dict | None = None,
        channels: int = 3,
        labels_root: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if root is None:
            raise BadValueError("data.root is not set: point it (or MIMIC_CXR_ROOT) at "
                                "MIMIC-CXR, or use the embedded sample with preset=sample")
        check_source(source)
        self.root = Path(root)
        self.source = source
        self.options = SourceOptions(labeler=labeler, label_policy=label_policy, views=views,
                                     split=split, split_seed=split_seed, labels_root=labels_root)
        self.preprocessing = Preprocessing(image_size, resize=resize, channels=channels,
                                           histogram_equalization=histogram_equalization)
        self.spec = CacheSpec(self.preprocessing)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir)
        self.cache_workers = cache_workers
        self.cache_url = cache_url
        self.augment = augment
        self.seed = seed
        self.predict_split = "test"
        self.sample = sample
        self.manifest: pd.DataFrame | None = None
        self.cohort_report: CohortReport | None = None
        self.cache: ImageCache | None = None
        self.activations: ActivationSource | None = None  # set by callbacks.prefix_cache

    def check_root(self) -> None:
        """A user error when ``root`` cannot hold the source (no table is read; nothing to
        check where the sample is to be generated on first use)."""
        if self.sample is None:
            check_root(self.source, self.root, self.options)

    def prepare_data(self) -> None:
        """Generate the sample when asked and missing, then build the manifest and the cache.

        Idempotent: later calls (Lightning calls it at every fit) reuse what is loaded.
        """
        if self.manifest is not None:
            return
        self.ensure_sample()
        self._load()

    def ensure_sample(self) -> None:
        """Generate the sample into ``root`` when asked (``sample``) and not complete there."""
        if self.sample is not None and not is_complete_sample(self.root):
            out_dir, layout = sample_out_dir(self.root)
            ensure_sample(out_dir, layout, trainable=True, **self.sample)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    def _load(self) -> None:
        manifest, self.cohort_report = build_manifest(self.source, self.root, self.options)
        self.cache = (self._remote_cache(manifest) if self.cache_url else build_image_cache(
            manifest, self.root, self.cache_dir, self.spec, self.cache_workers))
        decoded = manifest["image_id"].isin(self.cache.row_of)
        self.cohort_report.dropped["undecodable"] = int((~decoded).sum())
        self.manifest = manifest[decoded].reset_index(drop=True)
        self.cohort_report.record_cohort(self.manifest)
        log.info("Cohort of %s (%s):\n%s", self.root, self.source,
                 cohort_summary(self.manifest, self.cohort_report).to_string())

    def _remote_cache(self, manifest: pd.DataFrame) -> ImageCache:
        """The prebuilt cache at ``cache_url``; its shards are fetched into ``cache_dir/remote``."""
        cache = open_image_cache(self.cache_url, self.spec, self.cache_dir / "remote")
        known = cache.row_of.keys() | set(cache.skipped["image_id"])
        absent = manifest.loc[~manifest["image_id"].isin(known), "image_id"]
        if len(absent):
            raise ValueError(
                f"the image cache {self.cache_url} lacks {len(absent)} of the cohort's "
                f"{len(manifest)} images (e.g. {absent.iloc[0]}): build it from the same source "
                "with python -m cxr_lightning.data.cache, or drop data.cache_url")
        return cache

    def split_manifest(self, split: str) -> pd.DataFrame:
        """The manifest rows of one split (train / val / test)."""
        if self.manifest is None:
            raise RuntimeError("call prepare_data() or setup() before asking for a split")
        rows = self.manifest[self.manifest["split"] == split].reset_index(drop=True)
        if rows.empty:
            raise ValueError(f"the {split!r} split of {self.root} is empty")
        return rows

    def train_labels(self) -> torch.Tensor:
        """(N, 2) training labels in FINDINGS order (NaN where masked)."""
        return torch.tensor(self.split_manifest("train")[list(FINDINGS)].to_numpy(np.float32))

    def _loader(self, split: str) -> DataLoader:
        """One split in manifest order, not augmented. Every loader has its own generator (the
        workers' base seed), so iterating one never draws from torch's global generator."""
        return OneOpenCVThreadLoader(
            self._served(CachedImageDataset(self.split_manifest(split), self.cache), split),
            generator=torch.Generator().manual_seed(self.seed), **self._loader_options())

    def _served(self, dataset: CachedImageDataset, split: str) -> Dataset:
        """``dataset``, or its activations when :attr:`activations` serves the split."""
        if self.activations is None or split not in self.activations.splits:
            return dataset
        return ActivationDataset(dataset, self.activations, split)

    def _loader_options(self) -> dict:
        """Options of every loader: with workers, each prefetches :data:`PREFETCH_FACTOR`
        batches (and runs OpenCV on one thread: :mod:`~cxr_lightning.data.workers`); they
        persist, except while activations are served (a new stage's store reaches new ones)."""
        workers = {"persistent_workers": self.activations is None,
                   "prefetch_factor": PREFETCH_FACTOR}
        return {"batch_size": self.batch_size, "num_workers": self.num_workers,
                "pin_memory": torch.cuda.is_available(), "drop_last": False,
                **(workers if self.num_workers > 0 else {})}

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor],
                                dataloader_idx: int) -> dict[str, torch.Tensor]:
        """On the device: uint8 grey images -> normalised float with ``channels`` channels
        (a batch of cached activations passes as it is)."""
        if "image" not in batch:
            return batch
        return {**batch, "image": self.preprocessing.normalise(batch["image"])}

    def train_dataloader(self) -> ResumableDataLoader:
        """The training split, shuffled and augmented per epoch from ``seed``; under DDP each
        rank takes its share of the same order."""
        dataset = self._served(CachedImageDataset(
            self.split_manifest("train"), self.cache,
            training_augmentation() if self.augment else None, seed=self.seed), "train")
        trainer = self.trainer
        sampler = EpochSampler(dataset, seed=self.seed,
                               num_replicas=trainer.world_size if trainer else 1,
                               rank=trainer.global_rank if trainer else 0)
        # drop_last: every step has a full batch (no tiny last batch for BatchNorm, no new shape
        # to autotune or compile), unless the split is smaller than one batch
        return ResumableDataLoader(dataset, sampler,
                                   generator=torch.Generator().manual_seed(self.seed),
                                   **{**self._loader_options(),
                                      "drop_last": len(sampler) >= self.batch_size})

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The split named by :attr:`predict_split` (default ``test``), in manifest order: what
        ``trainer.predict`` scores."""
        return self._loader(self.predict_split)
