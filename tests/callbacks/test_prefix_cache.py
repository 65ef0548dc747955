"""PrefixCache: training on the frozen prefix's cached activations is training without them.

Real ``trainer.fit`` runs of :class:`CXRClassifier` (resnet18, random init, 32 px) on the shared
40-subject sample through :class:`CXRDataModule`, with the study's settings in miniature (one
epoch per stage: head, + layer4.1, + layer4.0), with and without the cache; the reference is the
run without it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.precision import Precision

from cxr_lightning.callbacks.prefix_cache import PrefixCache, _prefix_rows
from cxr_lightning.callbacks.timing import EpochTimer
from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.models.backbones import POOLED, calibrate_batchnorm
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation
from tests.helpers.samples import sample_tables


class BatchKinds(pl.Callback):
    """Per training epoch: which kind of batch the model was fed (``activations`` or
    ``image``) and the shape of its rows."""

    def __init__(self) -> None:
        self.kinds: list[set[tuple[str, tuple[int, ...]]]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.kinds.append(set())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        key = "activations" if "activations" in batch else "image"
        self.kinds[-1].add((key, tuple(batch[key].shape[1:])))


def _fit(sample: Path, cache_dir: Path, cache: bool, augment: bool = False, epochs: int = 3,
         checkpoints: Path | None = None, resume_from: Path | None = None
         ) -> tuple[CXRClassifier, CXRDataModule, BatchKinds, list[torch.Tensor], EpochTimer]:
    pl.seed_everything(0, workers=True)
    datamodule = CXRDataModule(str(sample), labels_root=str(sample_tables(sample)),
                               image_size=32, batch_size=16, num_workers=0, augment=augment,
                               cache_dir=str(cache_dir), cache_workers=1)
    datamodule.prepare_data()
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights="none")
    calibrate_batchnorm(model.backbone, (datamodule.on_after_batch_transfer(b, 0)["image"]
                                         for b in datamodule.train_dataloader()))
    unfreezing = ProgressiveUnfreezing(interval=1, until="layer4.0", last_stage_epochs=1)
    kinds, timer = BatchKinds(), EpochTimer()
    callbacks = [unfreezing, *([PrefixCache(unfreezing)] if cache else []), kinds, timer]
    if checkpoints is not None:  # every epoch's
        callbacks.append(ModelCheckpoint(checkpoints, "{epoch}", save_top_k=-1))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                         enable_checkpointing=checkpoints is not None, enable_progress_bar=False,
                         enable_model_summary=False, deterministic=True, callbacks=callbacks)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    predictions = trainer.predict(model, datamodule=datamodule) if epochs == 3 else []
    return model, datamodule, kinds, predictions, timer


@pytest.fixture(scope="module")
def fits(small_sample, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("prefix_cache")
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    return {"off": _fit(small_sample, cache_dir, cache=False),
            "on": _fit(small_sample, cache_dir, cache=True, checkpoints=checkpoints),
            "checkpoints": checkpoints, "cache_dir": cache_dir}


def test_cache_on_trains_the_same_weights_and_predictions_as_cache_off(fits):
    off, on = fits["off"][0], fits["on"][0]
    for (name, a), (_, b) in zip(off.state_dict().items(), on.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(torch.cat(fits["off"][3]), torch.cat(fits["on"][3]))


def test_a_run_resumed_inside_a_cached_stage_ends_where_the_uninterrupted_one_does(
        fits, small_sample):
    # epoch 1 trained layer4.1 on its cached input; the resumed run serves that stage again
    resumed = _fit(small_sample, fits["cache_dir"], cache=True,
                   resume_from=fits["checkpoints"] / "epoch=1.ckpt")
    assert resumed[2].kinds == [{("activations", (256, 2, 2))}]  # epoch 2 only: + layer4.0
    for (name, a), (_, b) in zip(fits["on"][0].state_dict().items(),
                                 resumed[0].state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_each_stage_trains_on_its_boundarys_activations(fits):
    # resnet18 at 32 px: pooled features (512), layer4.1's input (512 x 1 x 1), layer4.0's
    # input, layer3's output (256 x 2 x 2)
    assert fits["on"][2].kinds == [{("activations", (512,))}, {("activations", (512, 1, 1))},
                                   {("activations", (256, 2, 2))}]
    assert fits["off"][2].kinds == [{("image", (3, 32, 32))}] * 3


def test_the_epoch_timer_counts_the_images_of_activation_batches(fits):
    datamodule = fits["on"][1]
    train, val = (len(datamodule.split_manifest(split)) for split in ("train", "val"))
    expected = [(train // 16 * 16, val)] * 3  # full training batches only (drop_last)
    for fit in ("on", "off"):
        records = fits[fit][4].throughput
        assert [(r["train_images"], r["val_images"]) for r in records] == expected, fit


def test_after_fit_the_module_and_datamodule_are_back_on_images(fits):
    model, datamodule = fits["on"][0], fits["on"][1]
    assert model.prefix_boundary is None and datamodule.activations is None
    assert "image" in next(iter(datamodule.train_dataloader()))


def test_augmentation_switches_the_cache_off_with_one_log_line(small_sample, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cxr_lightning.callbacks.prefix_cache"):
        _, _, kinds, _, _ = _fit(small_sample, tmp_path, cache=True, augment=True, epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("prefix_cache")]
    assert lines == ["The frozen-prefix activation cache is off: data.augment=true (each epoch "
                     "sees other images)"]
    assert kinds.kinds == [{("image", (3, 32, 32))}]
    assert not (tmp_path / "activations").exists()


def test_a_lone_last_row_is_computed_as_in_a_full_batch(small_sample, tmp_path):
    """oneDNN convolves one image otherwise than a batch: a store's last row, alone in its
    chunk, must still be what the live forward gives it inside a batch."""
    datamodule = CXRDataModule(str(small_sample), labels_root=str(sample_tables(small_sample)),
                               image_size=64, batch_size=16, num_workers=0,
                               cache_dir=str(tmp_path), cache_workers=1)
    datamodule.prepare_data()
    torch.manual_seed(0)
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights="none").eval()
    ids = list(datamodule.split_manifest("train")["image_id"][:17])
    trainer = SimpleNamespace(precision_plugin=Precision())
    rows = _prefix_rows(trainer, model.backbone, POOLED, datamodule, ids, torch.device("cpu"))
    images = torch.stack([torch.from_numpy(datamodule.cache.get(i).copy()) for i in ids[1:]])
    with torch.no_grad():
        live = model.backbone(datamodule.preprocessing.normalise(images).contiguous(
            memory_format=torch.channels_last))
    assert torch.equal(rows[16], live[15])
