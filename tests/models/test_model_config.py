"""The model, its optimizer and its scheduler are built from the config (``model/optimizer``,
``model/scheduler``) and keep working across progressive unfreezing."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from cxr_lightning.models.classifier import CXRClassifier, kernel_options
from cxr_lightning.train import PROJECT_CONF_DIR
from cxr_lightning.training import build_classifier

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(PROJECT_CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=["preset=sample", *overrides])


class LearningRates(pl.Callback):
    """Every param group's learning rate at the start of each training epoch."""

    def __init__(self) -> None:
        self.per_epoch: list[list[float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.per_epoch.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def _batches(n: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    labels = torch.tensor([[k % 2, (k // 2) % 2] for k in range(n)], dtype=torch.float32)
    return DataLoader([{"image": i, "labels": y} for i, y in zip(images, labels, strict=True)],
                      batch_size=4)


def test_sgd_and_cosine_from_the_config_train_across_every_unfreeze(tmp_path):
    cfg = _compose("formulation=multilabel", "model/optimizer=sgd", "model/scheduler=cosine",
                   "trainer.max_epochs=6", "unfreeze.interval=1")
    member = instantiate(cfg.formulation.plan).members[0]
    model = build_classifier(cfg, member)
    lrs = LearningRates()
    trainer = pl.Trainer(max_epochs=cfg.trainer.max_epochs, accelerator="cpu", logger=False,
                         callbacks=[instantiate(cfg.unfreeze), lrs], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, _batches(16, 0), _batches(8, 1))
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (optimizer.defaults["momentum"], optimizer.defaults["nesterov"]) == (0.9, True)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    # ResNet18 under the study's schedule: head, + layer4.1, + layer4.0, one epoch each
    assert [len(epoch) for epoch in lrs.per_epoch] == [1, 2, 3]
    for epoch, rates in enumerate(lrs.per_epoch):
        # by hand: cosine annealing from model.lr to 0 over trainer.max_epochs = 6 epochs
        expected = cfg.model.lr * (1 + math.cos(math.pi * epoch / 6)) / 2
        assert rates == [pytest.approx(expected, rel=1e-9)] * len(rates)


def test_without_a_scheduler_the_learning_rate_is_constant():
    cfg = _compose("formulation=multilabel")
    assert cfg.model.get("scheduler") is None
    model = build_classifier(cfg, instantiate(cfg.formulation.plan).members[0])
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (
        cfg.model.lr, cfg.model.weight_decay)


def test_kernel_options_follow_the_device_and_leave_a_configured_choice_alone():
    assert kernel_options(torch.optim.AdamW, "cuda") == {"fused": True}
    assert kernel_options(torch.optim.AdamW, "cpu") == {"foreach": True}
    configured = instantiate({"_target_": "torch.optim.AdamW", "_partial_": True,
                              "foreach": False})
    assert kernel_options(configured, "cuda") == {}


def test_the_checkpointed_hyperparameters_leave_the_optimizer_out():
    """A bundle rebuilds the network from ``hparams``: they must not hold the factories."""
    cfg = _compose("formulation=multilabel", "model/optimizer=sgd", "model/scheduler=step")
    model = build_classifier(cfg, instantiate(cfg.formulation.plan).members[0])
    assert set(model.hparams) == {"backbone", "weights", "lr", "weight_decay", "in_channels"}
    rebuilt = CXRClassifier(model.formulation, **model.hparams)
    assert rebuilt.optimizer_factory is torch.optim.AdamW


def test_the_command_line_chooses_optimizer_and_scheduler():
    result = subprocess.run(
        [sys.executable, "-m", "cxr_lightning.train", "model/optimizer=sgd",
         "model/scheduler=cosine", "--cfg", "job", "--resolve"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert "_target_: torch.optim.SGD" in result.stdout
    assert "_target_: torch.optim.lr_scheduler.CosineAnnealingLR" in result.stdout
