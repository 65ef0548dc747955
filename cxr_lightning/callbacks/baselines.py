"""Reference points for measuring ProgressiveUnfreezing, not for training."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning


class NaiveFreeze(BaseFinetuning):
    """Lightning's default freeze (``train_bn=True``), nothing ever unfrozen.

    Its BatchNorm layers stay trainable and in train mode, so the autograd graph runs through the
    whole trunk: the baseline that the benchmark and the frozen-prefix test compare against.
    """

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze the backbone except its BatchNorm layers."""
        self.freeze(pl_module.backbone, train_bn=True)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int,
                          optimizer: torch.optim.Optimizer) -> None:
        """Unfreeze nothing."""
